"""Image quality metrics: one entry point for fidelity (PSNR, SSIM, MS-SSIM) and perceptual (LPIPS,
DISTS) metrics.

    from pcdc_jax import metrics
    values = metrics.evaluate(x, y, which=("psnr", "lpips_alex", "dists"))   # {name: [N] float64}

The differentiable per-batch functions for losses and rewards are `fidelity.psnr/ssim/ms_ssim`,
`perceptual.lpips(params, x, y, net)` and `perceptual.dists(params, dparams, x, y)`, with the
weights from `metrics.weights`.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from pcdc_jax.metrics import fidelity, perceptual, weights

ALL = ("psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg", "dists")
ALIASES = {"lpips": "lpips_alex"}
_BROADCASTS = ("lpips_alex", "lpips_vgg", "dists")    # take one reference x against a batch y as is
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "ms_ssim": True, "lpips_alex": False,
                    "lpips_vgg": False, "dists": False}


def _with_weights(name):
    """(f, weights): the metric as f(*weights, x, y) -> [N] on float batches in [0, 1]."""
    if name in ("psnr", "ssim", "ms_ssim"):
        return getattr(fidelity, name), ()
    if name.startswith("lpips_"):
        net = name.split("_")[1]
        return functools.partial(perceptual.lpips, net=net), (weights.load(net),)
    return perceptual.dists, (weights.load("vgg"), weights.load_dists())


def function(name: str):
    """The differentiable metric `name` as f(x, y) -> [N] with its weights bound (for losses,
    rewards and benchmarks; jit it as needed)."""
    f, w = _with_weights(ALIASES.get(name, name))
    return lambda x, y: f(*w, x, y)


@functools.lru_cache(maxsize=None)
def _batch_fn(name):
    """A jitted f(x, y) -> [N]; the weights travel as arguments, not as embedded constants."""
    f, w = _with_weights(name)
    jf = jax.jit(f)
    return lambda x, y: jf(*w, x, y)


def to_float(a) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1], HWC or NHWC -> float32 NHWC in [0, 1]."""
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected RGB images as HWC or NHWC arrays, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected uint8 or float images, got {a.dtype}")
    return a.astype(np.float32)


def evaluate(x, y, which=ALL, *, max_batch_pixels: int = 1 << 20, tile: int = 512) -> dict[str, np.ndarray]:
    """Metrics of image pairs, one value per image: {name: float64 array [N]}.

    x, y: uint8 or [0, 1] float, HWC or NHWC, same shape; or one reference x against a batch y
    (x [1, H, W, 3] or HWC): then the reference's features are computed once per chunk, not once
    per pair, which halves the cost of LPIPS and DISTS for many reconstructions of one image.
    Batches are evaluated in chunks of at most `max_batch_pixels` pixels; an image larger than that
    is evaluated alone, LPIPS and DISTS through exact overlapping tiles of `tile` pixels, so memory stays bounded for any size (a 4000x2250
    frame included) and the value equals the whole-image one. MS-SSIM is NaN for images smaller than
    161 pixels a side (five scales need that much).
    """
    x, y = to_float(x), to_float(y)
    if x.shape[1:] != y.shape[1:] or x.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    one = x.shape[0] == 1                      # one reference for every y: broadcast, never copied
    names = [ALIASES.get(n, n) for n in ((which,) if isinstance(which, str) else which)]
    for n in names:
        if n not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {n!r}; expected some of {ALL}")
    n_img, h, w, _ = y.shape
    out = {n: np.empty(n_img, np.float64) for n in names}
    chunk = max(1, max_batch_pixels // (h * w))
    for name in names:
        if name == "ms_ssim" and min(h, w) < fidelity.ms_ssim_min_side():
            out[name][:] = np.nan
            continue
        for i in range(0, n_img, chunk):
            ys = y[i:i + chunk]
            xs = x[i:i + chunk] if not one else x if name in _BROADCASTS else np.broadcast_to(x, ys.shape)
            if h * w > max_batch_pixels and name.startswith("lpips_"):
                out[name][i] = perceptual.lpips_tiled(weights.load(name[6:]), xs, ys, name[6:], tile)
            elif h * w > max_batch_pixels and name == "dists":
                out[name][i] = perceptual.dists_tiled(weights.load("vgg"), weights.load_dists(), xs, ys, tile)
            else:
                out[name][i:i + chunk] = np.asarray(_batch_fn(name)(xs, ys), np.float64)
    return out


__all__ = ["ALL", "HIGHER_IS_BETTER", "evaluate", "function", "fidelity", "perceptual", "to_float", "weights"]
