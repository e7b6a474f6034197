"""Context decoder: dequantized latent + level map -> base image and multi-scale features.

The features are what the diffusion U-Net conditions on (one map per resolution); x_base is the
deterministic reconstruction that `steps=0` returns.

Windowed decoding (`crop`): the decoder is fully convolutional with a finite receptive field, so
a window of the output can be computed exactly from a crop of the latent with a halo. To keep
the halo cheap, the map is narrowed after every stage to what the remaining layers still need
(`stage_halos`); the expensive high-resolution stages then run on little more than the window.
"""
from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdc_jax.codec.layers import ResBlock, Up, act, depth_to_space
from pcdc_jax.config import CodecConfig

STAGE_STRIDES = (16, 8, 4, 2)


def stage_halos(cfg: CodecConfig) -> tuple[int, ...]:
    """Latent positions of context each crop needs, (input, after stride 16, 8, 4, 2 stages, out).

    Counted from the 3x3 convolutions (radius 1 at their stride) that follow each point; the last
    entry is 0 (the window itself).
    """
    nb = cfg.decoder_res_blocks
    rem = [2]                                   # up_out's 3x3 convolution at stride 2
    for k in (2, 1, 0):                         # Up(k+1) convolution + stage k+1 residual blocks
        rem.insert(0, STAGE_STRIDES[k] + 2 * nb * STAGE_STRIDES[k + 1] + rem[0])
    first = 16 * (cfg.latent_kernel // 2 + 2 * nb) + rem[0]   # conv_in + stride-16 residual blocks
    return tuple(math.ceil(px / 16) for px in [first] + rem) + (0,)


class ContextDecoder(nn.Module):
    cfg: CodecConfig

    @nn.compact
    def __call__(self, y_hat: jax.Array, levels: jax.Array,
                 crop: Callable[[jax.Array, int, int], jax.Array] | None = None
                 ) -> tuple[jax.Array, dict[int, jax.Array]]:
        """y_hat [B, h, w, M], levels int [B, h, w] -> (x_base [B, 16h, 16w, 3], {stride: feature}).

        Feature maps: {16: [B, h, w, C0], 8: [B, 2h, 2w, C1], 4: ..., 2: ...}. With `crop`, the
        map at stride s is passed through crop(map, s, k) after stage k (k = 0..3), the output
        through crop(x, 1, 4) and the latent of the linear skip through crop(y_hat, 16, 5); the
        result covers what crops 4 and 5 keep (the window).
        """
        cfg = self.cfg
        crop = crop or (lambda h, s, k: h)
        onehot = jax.nn.one_hot(levels, cfg.num_levels, dtype=y_hat.dtype)
        k = cfg.latent_kernel
        h = act(nn.Conv(cfg.decoder_channels[0], (k, k), name="conv_in")(
            jnp.concatenate([y_hat, onehot], axis=-1)))
        features = {}
        for i, c in enumerate(cfg.decoder_channels):
            stride = STAGE_STRIDES[i]
            if i > 0:
                h = Up(c, name=f"up{i}")(h)
            for r in range(cfg.decoder_res_blocks):
                h = ResBlock(c, name=f"res{i}_{r}")(h)
            h = crop(h, stride, i)
            features[stride] = h
        x = Up(3, activation=False, name="up_out")(h)
        x = crop(x, 1, 4)
        if cfg.linear_skip:
            x = x + depth_to_space(nn.Dense(16 * 16 * 3, kernel_init=nn.initializers.zeros,
                                              name="block_linear")(crop(y_hat, 16, 5)), 16)
        return x + 0.5, features
