"""Context decoder: dequantized latent + level map -> base image and multi-scale features.

The features are what the diffusion U-Net conditions on (one map per resolution); x_base is the
deterministic reconstruction that `steps=0` returns.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdc_jax.codec.layers import ResBlock, Up, act, depth_to_space
from pcdc_jax.config import CodecConfig


class ContextDecoder(nn.Module):
    cfg: CodecConfig

    @nn.compact
    def __call__(self, y_hat: jax.Array, levels: jax.Array) -> tuple[jax.Array, dict[int, jax.Array]]:
        """y_hat [B, h, w, M], levels int [B, h, w] -> (x_base [B, 16h, 16w, 3], {stride: feature}).

        Feature maps: {16: [B, h, w, C0], 8: [B, 2h, 2w, C1], 4: ..., 2: ...}.
        """
        cfg = self.cfg
        onehot = jax.nn.one_hot(levels, cfg.num_levels, dtype=y_hat.dtype)
        h = act(nn.Conv(cfg.decoder_channels[0], (3, 3), name="conv_in")(
            jnp.concatenate([y_hat, onehot], axis=-1)))
        features = {}
        stride = 16
        for i, c in enumerate(cfg.decoder_channels):
            if i > 0:
                h = Up(c, name=f"up{i}")(h)
                stride //= 2
            for r in range(cfg.decoder_res_blocks):
                h = ResBlock(c, name=f"res{i}_{r}")(h)
            features[stride] = h
        x = Up(3, activation=False, name="up_out")(h)
        if cfg.linear_skip:
            x = x + depth_to_space(nn.Dense(16 * 16 * 3, kernel_init=nn.initializers.zeros,
                                              name="block_linear")(y_hat), 16)
        return x + 0.5, features
