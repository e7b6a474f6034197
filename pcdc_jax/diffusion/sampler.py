"""DDIM sampling of the residual over x_base, and the jitted per-window-batch decoder.

`window_sampler` builds the function that takes a batch of latent crops and returns the decoded
windows: context decoder (windowed, exact) -> DDIM with the U-Net, the whole step loop one
`lax.scan`, all inside one jitted call per batch.

Noise is keyed by position, never by batch slot: the noise of latent block (row, col) of the
canvas at step i is normal(fold_in(fold_in(fold_in(PRNGKey(seed), i), row), col)). A window's
noise is the blocks it covers, so overlapping windows start from the same noise where they
overlap, and the image is the same on 1 device or 8 and for any batch size.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jax.sharding import Mesh, PartitionSpec as P

from pcdc_jax import parallel
from pcdc_jax.codec.decoder import STAGE_STRIDES
from pcdc_jax.codec.model import Codec
from pcdc_jax.config import Config, DiffusionConfig
from pcdc_jax.diffusion import schedule
from pcdc_jax.diffusion.unet import UNet

BLOCK = 16


def block_noise(key: jax.Array, origin: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Standard normal [16 size[0], 16 size[1], 3] for the blocks at latent `origin` [2] onward."""
    rows = origin[0] + jnp.arange(size[0])
    cols = origin[1] + jnp.arange(size[1])

    def one(r, c):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, r), c), (BLOCK, BLOCK, 3))

    n = jax.vmap(jax.vmap(one, (None, 0)), (0, None))(rows, cols)      # [sy, sx, 16, 16, 3]
    return n.transpose(0, 2, 1, 3, 4).reshape(size[0] * BLOCK, size[1] * BLOCK, 3)


class _Carry(NamedTuple):
    r: jax.Array


def ddim(denoise: Callable, noise: Callable, steps: int, eta: float, kind: str = "cosine",
         t_start: float = 1.0) -> jax.Array:
    """DDIM (Song et al. 2021, eq. 12) from t=t_start to t=0 in `steps` uniform steps.

    The start is r_{t_start} = sqrt(1 - alpha_bar(t_start)) * noise: the residual's prior mean 0
    (x_base itself) noised to t_start, so t_start < 1 refines x_base (SDEdit-like) and the
    U-Net only works at noise levels up to t_start; t_start=1 is sampling from pure noise.

    denoise(r_t, t [1]) -> predicted r0 (t is shared by the batch; passing it once keeps the
    time-embedding matmuls independent of the batch size, hence bit-identical for any batch); noise(i) -> standard normal of the sample's shape (i=0:
    the start at t=1, i>=1: fresh noise of step i, used only when eta > 0). Returns r0 of the
    last step. eta=0 is deterministic given the start noise.
    """
    ts = jnp.linspace(t_start, 0.0, steps + 1)
    r = ddim_start(noise(0), ts[0], kind)

    def body(carry: _Carry, i):
        return _Carry(ddim_step(denoise, noise, carry.r, ts, i, eta, kind)), None

    carry, _ = jax.lax.scan(body, _Carry(r), jnp.arange(steps))
    return carry.r


def ddim_start(noise0: jax.Array, t_start, kind: str) -> jax.Array:
    """r at t_start: the residual's prior mean 0 (x_base itself) noised to t_start."""
    return jnp.sqrt(1.0 - schedule.alpha_bar(t_start, kind)) * noise0


def ddim_step(denoise: Callable, noise: Callable, r: jax.Array, ts: jax.Array, i, eta: float,
              kind: str) -> jax.Array:
    """Step i of a DDIM chain over the grid ts (descending): r at ts[i] -> r at ts[i + 1]."""
    t, tn = ts[i], ts[i + 1]
    ab, abn = schedule.alpha_bar(t, kind), schedule.alpha_bar(tn, kind)
    r0 = denoise(r, jnp.full((1,), t))
    eps = (r - jnp.sqrt(ab) * r0) / jnp.sqrt(1.0 - ab)
    sigma = eta * jnp.sqrt((1.0 - abn) / (1.0 - ab) * (1.0 - ab / abn))
    r_next = jnp.sqrt(abn) * r0 + jnp.sqrt(jnp.maximum(1.0 - abn - sigma ** 2, 0.0)) * eps
    if eta > 0:
        r_next = r_next + sigma * noise(i + 1)
    return r_next


def denoiser(d: DiffusionConfig, unet_params, x_base: jax.Array, features) -> Callable:
    """The sampler's denoise(r_t, t) -> r0: the U-Net's prediction, clipped so that the x0 it
    implies stays inside [0, 1]."""
    lo, hi = -x_base / d.residual_scale, (1.0 - x_base) / d.residual_scale

    def denoise(r, t):
        return jnp.clip(UNet(d).apply({"params": unet_params}, r, t, x_base, features), lo, hi)

    return denoise


def _slice(h: jax.Array, offsets: jax.Array, size: tuple[int, int], factor: int) -> jax.Array:
    """Per-sample crop: h [B, H, W, C], offsets [B, 2] latent -> [B, size*factor, C]."""
    sy, sx = size[0] * factor, size[1] * factor
    return jax.vmap(lambda a, o: jax.lax.dynamic_slice(
        a, (o[0] * factor, o[1] * factor, 0), (sy, sx, a.shape[-1])))(h, offsets)


def window_sampler(cfg: Config, crop_sizes, steps: int, eta: float, mesh: Mesh | None = None,
                   t_start: float | None = None):
    """-> fn(codec_params, unet_params, y, levels, starts, seed) -> windows [B, Sy, Sx, 3] float32.

    y [B, ny, nx, M] and levels [B, ny, nx] are the input crops of `windows.plan` (crop_sizes[0]),
    starts [B, 6, 2] their `plan.starts`, seed an int32 scalar. steps=0 returns x_base. DDIM runs
    from t_start (default: the config's).

    With a mesh, the batch is split over its data axis (shard_map). Each device decodes its
    windows one after another (`lax.map`): XLA's CPU convolutions give results that depend on
    the batch size in the last bits, and one window at a time makes every window's output
    independent of how many windows share a call or a device.
    """
    cc, d = cfg.codec, cfg.diffusion
    win = crop_sizes[-1]

    def one(codec_params, unet_params, y, levels, starts, seed):
        y, levels, starts = y[None], levels[None], starts[None]

        def crop(h, stride, k):
            target, domain = min(k + 1, 5), (k if k <= 4 else 0)
            return _slice(h, starts[:, target] - starts[:, domain], crop_sizes[target], BLOCK // stride)

        x_base, feats = Codec(cc).apply({"params": codec_params}, y, levels, crop, method=Codec.synthesis)
        if steps == 0:
            return x_base[0]
        feats = {s: _slice(feats[s], starts[:, 5] - starts[:, k + 1], win, BLOCK // s)
                 for k, s in enumerate(STAGE_STRIDES)}
        key = jax.random.PRNGKey(seed)

        def noise(i):
            return block_noise(jax.random.fold_in(key, i), starts[0, 5], win)[None]

        r = ddim(denoiser(d, unet_params, x_base, feats), noise, steps, eta, d.schedule,
                 d.t_start if t_start is None else t_start)
        return (x_base + d.residual_scale * r)[0]

    def local(codec_params, unet_params, y, levels, starts, seed):
        return jax.lax.map(lambda a: one(codec_params, unet_params, *a, seed), (y, levels, starts))

    if mesh is None:
        return local
    b, r = P(parallel.DATA_AXIS), P()
    return jax.shard_map(local, mesh=mesh, in_specs=(r, r, b, b, b, r), out_specs=b)
