"""Fidelity metrics on float NHWC batches in [0, 1]: PSNR, SSIM (dm-pix), MS-SSIM; rate from bytes.

Every function returns one value per image, is jittable and differentiable.
"""
from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

# Wang, Simoncelli & Bovik (2003): the standard five-scale exponents.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K = 11, 1.5, (0.01, 0.03)


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
    """PSNR in dB against a peak of 1 (identical images give +inf)."""
    return -10.0 * jnp.log10(mse(x, y))


def _gaussian_taps() -> np.ndarray:
    r = np.arange(SSIM_WINDOW, dtype=np.float64) - SSIM_WINDOW // 2
    g = np.exp(-np.square(r) / (2 * SSIM_SIGMA ** 2))
    return (g / g.sum()).astype(np.float32)


def _gaussian_filter(x: jax.Array) -> jax.Array:
    """Separable 11-tap Gaussian over axes -3 and -2 (H, W of [..., H, W, C]), 'valid' positions
    only, as a sum of shifted slices: XLA fuses it into one pass, far faster on CPU than a grouped
    convolution."""
    g = _gaussian_taps()
    for axis in (-3, -2):
        n = x.shape[axis] - SSIM_WINDOW + 1
        x = sum(float(g[k]) * jax.lax.slice_in_dim(x, k, k + n, axis=axis % x.ndim)
                for k in range(SSIM_WINDOW))
    return x


def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
    """SSIM (dm-pix) with an 11x11 Gaussian window (sigma 1.5), K = (0.01, 0.03), mean over valid
    positions and channels (the settings of Wang et al. and of scikit-image's gaussian_weights=True)."""
    return dm_pix.ssim(x.astype(jnp.float32), y.astype(jnp.float32), max_val=1.0,
                       filter_size=SSIM_WINDOW, filter_sigma=SSIM_SIGMA, k1=SSIM_K[0], k2=SSIM_K[1],
                       filter_fn=_gaussian_filter)


def _ssim_cs(x, y):
    """Per-image, per-channel mean SSIM and contrast-structure term, each [N, C]."""
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    mx, my = _gaussian_filter(x), _gaussian_filter(y)
    sxx = _gaussian_filter(x * x) - mx * mx
    syy = _gaussian_filter(y * y) - my * my
    sxy = _gaussian_filter(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    s = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return jnp.mean(s, axis=(1, 2)), jnp.mean(cs, axis=(1, 2))


def _avg_pool2(x):
    """2x2 mean with stride 2; an odd side gets one zero row/column on each end, counted in the mean
    (as in the reference MS-SSIM implementations)."""
    ph, pw = x.shape[1] % 2, x.shape[2] % 2
    x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def ms_ssim_min_side() -> int:
    return (SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1


def ms_ssim(x: jax.Array, y: jax.Array) -> jax.Array:
    """Five-scale MS-SSIM (weights MS_SSIM_WEIGHTS), negative terms clipped at 0, mean over channels.
    Needs both sides >= ms_ssim_min_side() (161) so the coarsest scale still holds a window."""
    if min(x.shape[1:3]) < ms_ssim_min_side():
        raise ValueError(f"MS-SSIM needs images of at least {ms_ssim_min_side()} pixels a side, "
                         f"got {x.shape[1]}x{x.shape[2]}")
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    w = jnp.asarray(MS_SSIM_WEIGHTS, jnp.float32)
    terms = []
    for i in range(len(MS_SSIM_WEIGHTS)):
        s, cs = _ssim_cs(x, y)
        if i < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(jax.nn.relu(cs))
            x, y = _avg_pool2(x), _avg_pool2(y)
        else:
            terms.append(jax.nn.relu(s))
    v = jnp.prod(jnp.stack(terms) ** w[:, None, None], axis=0)     # [N, C]
    return jnp.mean(v, axis=-1)


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a file of num_bytes for an image of height x width."""
    return 8.0 * num_bytes / (height * width)


def compression_ratio(num_bytes: int, height: int, width: int) -> float:
    """Raw 24-bit RGB size over the file size (the paper's measure)."""
    return 3.0 * height * width / num_bytes
