"""Encoder-side signals of every block, the allocation policy's state s_b (PCDC eqs. 2-4).

Static per block (computed once per image, for all blocks in one call):
  - statistics of the high-frequency residual h = H(x0), H a fixed 3x3 Laplacian on luma:
    log energy, log peak, and the log variance of the block's luma (smooth gradients);
  - a pooled latent embedding: over `latent_groups` groups of y's channels, the log mean
    |y - mu| and the mean log prior scale (what the hyperprior expects the block to cost);
  - the block's position p_b (row and column centre, in [0, 1]);
  - the latent-domain quantization error of the block at each level (log), the distortion side
    of the rate table;
  - the block's row of the exact rate table, as log(1 + bits per pixel) at each level.
Dynamic (in the rollout, from the carried remaining budget): see `dynamic`.

Everything works on whole arrays; blocks are latent positions in raster order (b = i * w + j).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pcdc_jax.config import Config

BLOCK = 16
PIXELS = BLOCK * BLOCK
# The fixed high-pass filter H: the 4-neighbour Laplacian (zero response to constant and linear
# ramps, so h holds texture and edges, not shading).
LAPLACIAN = ((0.0, -0.25, 0.0), (-0.25, 1.0, -0.25), (0.0, -0.25, 0.0))
LUMA = (0.299, 0.587, 0.114)


def highpass(x: jax.Array) -> jax.Array:
    """h = H(x0): x [..., H, W, 3] in [0, 1] -> [..., H, W] (luma, edge-replicated borders)."""
    lum = x @ jnp.asarray(LUMA, x.dtype)
    pad = [(0, 0)] * (lum.ndim - 2) + [(1, 1), (1, 1)]
    p = jnp.pad(lum, pad, mode="edge")
    k = LAPLACIAN
    H, W = lum.shape[-2:]
    return sum(k[i][j] * p[..., i:i + H, j:j + W] for i in range(3) for j in range(3) if k[i][j])


def _blocks(a: jax.Array) -> jax.Array:
    """[..., H, W] -> [..., H/16, W/16, 256]."""
    *lead, H, W = a.shape
    a = a.reshape(*lead, H // BLOCK, BLOCK, W // BLOCK, BLOCK)
    a = jnp.moveaxis(a, -3, -2)
    return a.reshape(*lead, H // BLOCK, W // BLOCK, PIXELS)


def hf_energy(x: jax.Array) -> jax.Array:
    """Mean squared high-pass residual of each block: x [..., H, W, 3] -> [..., H/16, W/16]."""
    return jnp.mean(jnp.square(_blocks(highpass(x))), axis=-1)


def hf_stats(x: jax.Array) -> jax.Array:
    """x [..., H, W, 3] (H, W multiples of 16) -> [..., H/16, W/16, 3]: log mean h^2, log max |h|,
    log variance of the block's luma."""
    h = _blocks(highpass(x))
    lum = _blocks(x @ jnp.asarray(LUMA, x.dtype))
    return jnp.stack([jnp.log(jnp.mean(jnp.square(h), -1) + 1e-6),
                      jnp.log(jnp.max(jnp.abs(h), -1) + 1e-3),
                      jnp.log(jnp.var(lum, -1) + 1e-6)], axis=-1)


def latent_embedding(y: jax.Array, mu: jax.Array, t: jax.Array, cfg: Config) -> jax.Array:
    """y, mu float [..., h, w, M], t int [..., h, w, M] (integer log-scales) -> [..., h, w, 2G]."""
    g = cfg.allocation.latent_groups
    m = y.shape[-1]
    if m % g:
        raise ValueError(f"latent_groups {g} must divide the latent channels {m}")
    grouped = lambda a: a.reshape(*a.shape[:-1], g, m // g)  # noqa: E731
    dev = jnp.log(jnp.mean(jnp.abs(grouped(y - mu)), -1) + 1e-3)
    log_sigma = (jnp.log(cfg.codec.scale_min)
                 + cfg.codec.scale_log_delta * jnp.mean(grouped(t.astype(jnp.float32)), -1))
    return jnp.concatenate([dev, log_sigma], axis=-1)


def latent_distortion(y: jax.Array, mu: jax.Array, symbols: jax.Array, cfg: Config) -> jax.Array:
    """sum_c (y - y_hat_k)^2 of every block at every level: y, mu [..., h, w, M], symbols int
    [..., K, h, w, M] -> [..., h * w, K] (the same quantity as `baselines.distortion_proxy`)."""
    steps = jnp.asarray(cfg.codec.level_steps(), jnp.float32)[:, None, None, None]
    err = (y - mu)[..., None, :, :, :] - steps * symbols.astype(jnp.float32)
    d = jnp.sum(jnp.square(err), -1)                                            # [..., K, h, w]
    return jnp.moveaxis(d.reshape(*d.shape[:-2], -1), -2, -1)


def rate_features(rates: jax.Array) -> jax.Array:
    """Exact bits [..., K] -> log(1 + bits per pixel of the block)."""
    return jnp.log1p(rates.astype(jnp.float32) / PIXELS)


def static(x: jax.Array, y: jax.Array, mu: jax.Array, t: jax.Array, symbols: jax.Array,
           rates: jax.Array, cfg: Config) -> jax.Array:
    """Per-block static features of one image or a batch.

    x [..., H, W, 3] in [0, 1] (the padded canvas, H = 16 h); y, mu [..., h, w, M]; t int
    [..., h, w, M]; symbols int [..., K, h, w, M]; rates [..., h * w, K] bits. Returns float32
    [..., h * w, num_static(cfg)], the rate features last.
    """
    h, w = y.shape[-3:-1]
    lead = y.shape[:-3]
    ii, jj = jnp.meshgrid((jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w, indexing="ij")
    pos = jnp.broadcast_to(jnp.stack([ii, jj], -1), (*lead, h, w, 2))
    grid = jnp.concatenate([hf_stats(x), latent_embedding(y, mu, t, cfg), pos], axis=-1)
    dist = jnp.log(latent_distortion(y, mu, symbols, cfg) + 1e-3)
    return jnp.concatenate([grid.reshape(*lead, h * w, -1), dist, rate_features(rates)], axis=-1)


def num_static(cfg: Config) -> int:
    return 3 + 2 * cfg.allocation.latent_groups + 2 + 2 * cfg.codec.num_levels


def dynamic(remaining: jax.Array, suffix: jax.Array, blocks_left: jax.Array, num_blocks: int) -> jax.Array:
    """The budget part of s_b at block b (the normalized remaining budget rho_b, eq. 3).

    remaining: bits left before block b; suffix [K]: bits of blocks b.. at each uniform level;
    blocks_left: N - b. Returns [K + 2]: log((remaining + 1) / (suffix_k + 1)) clipped to [-5, 5]
    (> 0: level k for all remaining blocks would fit), log(1 + remaining bpp per remaining block),
    and the fraction of blocks left.
    """
    rem = remaining.astype(jnp.float32)
    afford = jnp.clip(jnp.log((rem + 1.0) / (suffix.astype(jnp.float32) + 1.0)), -5.0, 5.0)
    rho = jnp.log1p(rem / (PIXELS * jnp.maximum(blocks_left, 1)))
    return jnp.concatenate([afford, rho[None], (blocks_left / num_blocks)[None].astype(jnp.float32)])


def num_features(cfg: Config) -> int:
    return num_static(cfg) + cfg.codec.num_levels + 2
