"""Windows of a canvas for diffusion sampling: layout, latent crops, blending, seam metric.

A canvas of hl x wl latent positions (the image padded to the 64 grid, /16) is covered by windows
of `window` pixels that overlap by `overlap` pixels; the last window of a row or column is moved
back to end at the canvas edge. Window ids are raster order, so they depend only on the image
size and the config, never on batching. Each window's context-decoder input is a latent crop
with the halo of `codec.decoder.stage_halos`, clamped inside the canvas (at the canvas edge the
crop edge *is* the canvas edge, so the zero padding matches the whole-canvas computation and the
windowed x_base and features are exact).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pcdc_jax.codec.decoder import stage_halos
from pcdc_jax.config import Config

BLOCK = 16


class WindowPlan(NamedTuple):
    canvas: tuple[int, int]                  # latent rows, cols
    size: tuple[int, int]                    # window rows, cols (latent)
    axis_origins: tuple[tuple[int, ...], tuple[int, ...]]   # latent origins along rows, cols
    origins: np.ndarray                      # int32 [N, 2] latent origin of window i (raster order)
    crop_sizes: tuple[tuple[int, int], ...]  # (rows, cols) of: input crop, crops 0..3, window
    starts: np.ndarray                       # int32 [N, 6, 2] canvas latent start of each of those
    overlap: int                             # pixels

    @property
    def num_windows(self) -> int:
        return len(self.origins)

    @property
    def window_pixels(self) -> tuple[int, int]:
        return self.size[0] * BLOCK, self.size[1] * BLOCK


def _axis_origins(n: int, win: int, stride: int) -> tuple[int, ...]:
    if n <= win:
        return (0,)
    return tuple(range(0, n - win, stride)) + (n - win,)


def _crop(w: int, size: int, halo: int, n: int) -> tuple[int, int]:
    """(start, length) of [w - halo, w + size + halo) clamped inside [0, n) at constant length."""
    length = min(size + 2 * halo, n)
    return min(max(w - halo, 0), n - length), length


def plan(hl: int, wl: int, cfg: Config) -> WindowPlan:
    """Windows covering a canvas of hl x wl latent positions."""
    d = cfg.diffusion
    win = d.window // BLOCK
    size = (min(win, hl), min(win, wl))
    stride = (d.window - d.overlap) // BLOCK
    ay, ax = _axis_origins(hl, size[0], stride), _axis_origins(wl, size[1], stride)
    origins = np.array([(y, x) for y in ay for x in ax], np.int32)
    halos = stage_halos(cfg.codec)            # input, after stages 0..3, window (0)
    starts = np.zeros((len(origins), len(halos), 2), np.int32)
    crop_sizes = []
    for k, h in enumerate(halos):
        lens = []
        for axis, n in enumerate((hl, wl)):
            for i, o in enumerate(origins[:, axis]):
                starts[i, k, axis], length = _crop(int(o), size[axis], h, n)
            lens.append(length)
        crop_sizes.append(tuple(lens))
    # Every crop must lie inside the previous one (the layers between them only shrink the map).
    lo, hi = starts, starts + np.array(crop_sizes, np.int32)[None]
    assert (lo[:, 1:] >= lo[:, :-1]).all() and (hi[:, 1:] <= hi[:, :-1]).all()
    return WindowPlan((hl, wl), size, (ay, ax), origins, tuple(crop_sizes), starts, d.overlap)


def gather(y_hat: np.ndarray, levels: np.ndarray, p: WindowPlan, ids) -> tuple[np.ndarray, np.ndarray]:
    """Latent input crops of windows `ids`: (y [B, ny, nx, M] float32, levels [B, ny, nx] int32)."""
    ny, nx = p.crop_sizes[0]
    ys = np.stack([y_hat[s[0]:s[0] + ny, s[1]:s[1] + nx] for s in p.starts[ids, 0]])
    ls = np.stack([levels[s[0]:s[0] + ny, s[1]:s[1] + nx] for s in p.starts[ids, 0]])
    return ys.astype(np.float32), ls.astype(np.int32)


def _ramp(origin_px: int, size_px: int, n_px: int, overlap: int) -> np.ndarray:
    """Per-pixel blend weight along one axis: rises over `overlap` pixels from each inner edge."""
    d = np.arange(size_px, dtype=np.float32)
    w = np.ones(size_px, np.float32)
    if overlap:
        if origin_px > 0:
            w = np.minimum(w, (d + 0.5) / overlap)
        if origin_px + size_px < n_px:
            w = np.minimum(w, (size_px - d - 0.5) / overlap)
    return w


def _core(origins: tuple[int, ...], size: int, i: int, n: int) -> tuple[int, int]:
    """[lo, hi) pixels window i owns alone along an axis: cut at the middle of each overlap."""
    lo = 0 if i == 0 else (origins[i] + origins[i - 1] + size) * BLOCK // 2
    hi = n * BLOCK if i == len(origins) - 1 else (origins[i + 1] + origins[i] + size) * BLOCK // 2
    return lo, hi


class Blender:
    """Accumulates window outputs into the canvas, in window-id order.

    `hard=False`: overlapping windows are blended with linear ramps across the overlap (for
    samples, which differ slightly where windows overlap). `hard=True`: each window writes only
    its core (the overlaps cut in the middle), for deterministic outputs that agree exactly.
    """

    def __init__(self, p: WindowPlan, hard: bool = False):
        self.p, self.hard = p, hard
        hl, wl = p.canvas
        self.acc = np.zeros((hl * BLOCK, wl * BLOCK, 3), np.float32)
        self.wsum = None if hard else np.zeros((hl * BLOCK, wl * BLOCK, 1), np.float32)
        self._index = {o: i for i, o in enumerate(p.axis_origins[0])}, \
            {o: i for i, o in enumerate(p.axis_origins[1])}

    def add(self, i: int, out: np.ndarray) -> None:
        """out [window rows px, window cols px, 3] of window i."""
        p = self.p
        oy, ox = (int(v) for v in p.origins[i])
        sy, sx = p.window_pixels
        py, px = oy * BLOCK, ox * BLOCK
        if self.hard:
            (y0, y1), (x0, x1) = (_core(p.axis_origins[a], p.size[a], self._index[a][o], p.canvas[a])
                                  for a, o in ((0, oy), (1, ox)))
            self.acc[y0:y1, x0:x1] = out[y0 - py:y1 - py, x0 - px:x1 - px]
            return
        w = (_ramp(py, sy, p.canvas[0] * BLOCK, p.overlap)[:, None]
             * _ramp(px, sx, p.canvas[1] * BLOCK, p.overlap)[None, :])[..., None]
        self.acc[py:py + sy, px:px + sx] += w * out
        self.wsum[py:py + sy, px:px + sx] += w

    def result(self) -> np.ndarray:
        """float32 [canvas rows px, canvas cols px, 3]."""
        return self.acc if self.hard else self.acc / self.wsum


def window_edges(p: WindowPlan) -> tuple[list[int], list[int]]:
    """Pixel rows and columns where a window starts or ends inside the canvas."""
    out = []
    for axis in (0, 1):
        n = p.canvas[axis] * BLOCK
        e = {o * BLOCK for o in p.axis_origins[axis]} | {(o + p.size[axis]) * BLOCK
                                                         for o in p.axis_origins[axis]}
        out.append(sorted(v for v in e if 0 < v < n))
    return out[0], out[1]


def seam_ratio(image: np.ndarray, p: WindowPlan, baseline: str = "grid") -> float:
    """Mean absolute pixel step across window edges over the mean step across the other block
    boundaries (the 16-pixel grid) inside the windows (`baseline="grid"`), or over the mean step
    everywhere else (`baseline="all"`).

    image [H, W, 3] (any dtype; the decoded image, at most the canvas). A step is the absolute
    difference between neighbouring pixels, averaged over channels; the step across a boundary at
    column c is between columns c-1 and c. Window edges lie on the codec's 16x16 block grid, so
    they are compared with the same grid elsewhere: block edges the codec itself leaves do not
    count as seams. About 1 means no visible seams; windows tiled with discontinuities score well
    above 1. NaN if no window edge or no other block boundary is inside the image.
    """
    x = np.asarray(image, np.float64)
    h, w = x.shape[:2]
    rows, cols = window_edges(p)
    dx = np.abs(np.diff(x, axis=1)).mean(-1)          # [H, W-1]; column c-1 is the step into c
    dy = np.abs(np.diff(x, axis=0)).mean(-1)          # [H-1, W]

    if baseline not in ("grid", "all"):
        raise ValueError(f"baseline must be 'grid' or 'all', got {baseline!r}")

    def masks(n, edges):
        edge = np.zeros(n - 1, bool)
        edge[[e - 1 for e in edges if e < n]] = True
        grid = np.zeros(n - 1, bool)
        grid[BLOCK - 1::BLOCK] = True
        return edge, (grid if baseline == "grid" else np.ones(n - 1, bool)) & ~edge

    ex, gx = masks(w, cols)
    ey, gy = masks(h, rows)
    border = np.concatenate([dx[:, ex].ravel(), dy[ey].ravel()])
    inside = np.concatenate([dx[:, gx].ravel(), dy[gy].ravel()])
    if border.size == 0 or inside.size == 0:
        return float("nan")
    return float(border.mean() / max(inside.mean(), 1e-12))
