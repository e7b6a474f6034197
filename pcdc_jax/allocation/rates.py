"""Exact per-block bit costs at every quantization level: the table allocation reads."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pcdc_jax.codec import quantize as q
from pcdc_jax.codec.entropy_coding import y_symbol_bits
from pcdc_jax.codec.prior import scale_index
from pcdc_jax.config import CodecConfig


def symbols_and_rates(y, mu, t, y_bits, y_half, *, cfg: CodecConfig):
    """Symbols and exact coded bits of every block at every level.

    y, mu float32 [h, w, M]; t int32 [h, w, M] (integer log-scales from the integer hyper decoder);
    y_bits [S, L] bits of each table entry; y_half [S].
    Returns (symbols int32 [K, h, w, M], bits float32 [h * w, K]); block b = (b // w, b % w).
    Jit with `cfg` bound (see `rate_table_fn`); one call for all blocks and levels.
    """
    h, w, _ = y.shape
    levels = jnp.arange(cfg.num_levels, dtype=jnp.int32)[:, None, None] * jnp.ones((1, h, w), jnp.int32)
    symbols = q.quantize(y[None], mu[None], levels, cfg)                       # [K, h, w, M]
    index = scale_index(t[None], levels, cfg)
    bits = jnp.sum(y_symbol_bits(symbols, index, y_bits, y_half), axis=-1)    # [K, h, w]
    return symbols, bits.reshape(cfg.num_levels, h * w).T


def rate_table_fn(cfg: CodecConfig):
    """Jitted `symbols_and_rates` for one codec config."""
    return jax.jit(lambda y, mu, t, y_bits, y_half: symbols_and_rates(
        y, mu, t, y_bits, y_half, cfg=cfg))
