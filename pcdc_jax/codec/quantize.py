"""Per-block quantization with K levels (one level per latent position).

symbol = round((y - mu) / step[level]),  y_hat = mu + step[level] * symbol.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pcdc_jax.config import CodecConfig


def level_steps(levels: jax.Array, cfg: CodecConfig) -> jax.Array:
    """levels int [..., h, w] -> step size [..., h, w, 1] (float32)."""
    return jnp.asarray(cfg.level_steps(), jnp.float32)[levels][..., None]


def quantize(y: jax.Array, mu: jax.Array, levels: jax.Array, cfg: CodecConfig) -> jax.Array:
    """Integer symbols (as int32) of y [..., h, w, M] at the given level map [..., h, w]."""
    v = jnp.round((y - mu) / level_steps(levels, cfg))
    return jnp.clip(v, -cfg.max_symbol, cfg.max_symbol).astype(jnp.int32)


def dequantize(symbols: jax.Array, mu: jax.Array, levels: jax.Array, cfg: CodecConfig) -> jax.Array:
    return mu + level_steps(levels, cfg) * symbols.astype(jnp.float32)


def noisy_symbols(y, mu, levels, key, cfg: CodecConfig):
    """Training proxy for the symbols: (y - mu)/step plus uniform noise (for the rate)."""
    v = (y - mu) / level_steps(levels, cfg)
    return v + jax.random.uniform(key, v.shape, v.dtype, -0.5, 0.5)


def ste_dequantize(y, mu, levels, cfg: CodecConfig):
    """Decoder input in training: mu + step * round((y - mu) / step), with the gradient of the
    identity in y (straight-through) and of the grid in mu (the rounding decision held), so the
    distortion, not the rate alone, teaches the mean where to put the grid."""
    step = level_steps(levels, cfg)
    y_hat = mu + step * jnp.round((y - mu) / step)
    return y + jax.lax.stop_gradient(y_hat - y) + (mu - jax.lax.stop_gradient(mu))
