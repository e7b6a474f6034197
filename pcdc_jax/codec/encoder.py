"""Analysis transforms: image -> y (stride 16) and y -> z (stride 4 on y)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdc_jax.codec.layers import Down, ResBlock, act, space_to_depth
from pcdc_jax.config import CodecConfig


class Encoder(nn.Module):
    """x in [0, 1], [B, H, W, 3] -> y [B, H/16, W/16, M]. Block b of 16x16 pixels is y[:, i, j]."""

    cfg: CodecConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x - 0.5
        h = x
        for i, c in enumerate(self.cfg.encoder_channels):
            h = Down(c, name=f"down{i}")(h)
            if i > 0:
                h = ResBlock(c, name=f"res{i}")(h)
        y = Down(self.cfg.latent_channels, activation=False, kernel=self.cfg.latent_kernel,
                 name="down_out")(h)
        if self.cfg.linear_skip:
            y = y + nn.Dense(self.cfg.latent_channels, name="block_linear")(space_to_depth(x, 16))
        return y


class HyperEncoder(nn.Module):
    """y [B, h, w, M] (with ln(1 + |y|) when `cfg.hyper_log_input`) -> z [B, h/4, w/4, Cz]."""

    cfg: CodecConfig

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        c = self.cfg.hyper_hidden
        k = self.cfg.latent_kernel
        if self.cfg.hyper_log_input:
            y = jnp.concatenate([y, jnp.log1p(jnp.abs(y))], axis=-1)
        h = act(nn.Conv(c, (k, k), name="conv_in")(y))
        h = Down(c, name="down0")(h)
        return Down(self.cfg.hyper_channels, activation=False, name="down1")(h)
