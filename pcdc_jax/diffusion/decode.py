"""Decoding a whole latent canvas through batches of windows sharded over the local devices.

The host cuts the dequantized latent into window crops (`windows.plan`), sends them in batches
of `batch` windows (split over the mesh's data axis) to one jitted call per batch, and blends the
returned windows into the canvas in window-id order while the next batch runs. Device memory is
bounded by the window batch; the host holds the latent and the output canvas.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from pcdc_jax import parallel
from pcdc_jax.config import Config
from pcdc_jax.diffusion import sampler, windows


class WindowDecoder:
    """Decodes latents of any size with a model's context decoder and (optionally) its U-Net.

    `calls` counts jitted calls (one per window batch) and `traces` counts compilations.
    """

    def __init__(self, cfg: Config, codec_params: Any, unet_params: Any | None = None,
                 devices: int | None = None):
        self.cfg = cfg
        self.mesh = parallel.make_mesh(devices)
        self.codec_params = parallel.replicate(codec_params, self.mesh)
        self.unet_params = None if unet_params is None else parallel.replicate(unet_params, self.mesh)
        self._fns: dict = {}
        self.calls = 0
        self.traces = 0

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def has_diffusion(self) -> bool:
        return self.unet_params is not None

    def _fn(self, crop_sizes, steps: int, eta: float, t_start: float):
        key = (crop_sizes, steps, eta, t_start)
        if key not in self._fns:
            inner = sampler.window_sampler(self.cfg, crop_sizes, steps, eta, self.mesh, t_start)

            def counted(*args):
                self.traces += 1          # runs once per trace, i.e. per compilation
                return inner(*args)

            rep, sh = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
            self._fns[key] = jax.jit(counted, in_shardings=(rep, rep, sh, sh, sh, rep), out_shardings=sh)
        return self._fns[key]

    def batch_size(self, batch: int | None) -> int:
        """Windows per call: `batch` (default from the config) rounded up to the device count."""
        b = self.cfg.diffusion.window_batch if batch is None else batch
        if b < 1:
            raise ValueError(f"window batch must be at least 1, got {b}")
        return math.ceil(b / self.num_devices) * self.num_devices

    def decode(self, y_hat: np.ndarray, levels: np.ndarray, *, steps: int = 0, seed: int = 0,
               eta: float | None = None, t_start: float | None = None,
               batch: int | None = None) -> np.ndarray:
        """y_hat float32 [hl, wl, M], levels [hl, wl] -> float32 canvas [16 hl, 16 wl, 3].

        steps=0 is the context decoder's x_base (windows placed without blending, exact);
        steps>0 runs DDIM with the U-Net from t_start and blends overlapping windows; eta and
        t_start default to the model's.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if steps > 0 and not self.has_diffusion:
            raise ValueError("this model has no diffusion decoder (U-Net); decode with steps=0")
        eta = self.cfg.diffusion.eta if eta is None else float(eta)
        t_start = self.cfg.diffusion.t_start if t_start is None else float(t_start)
        if not 0.0 < t_start <= 1.0:
            raise ValueError(f"t_start must be in (0, 1], got {t_start}")
        p = windows.plan(*levels.shape, self.cfg)
        fn = self._fn(p.crop_sizes, steps, eta, t_start)
        b = self.batch_size(batch)
        blender = windows.Blender(p, hard=steps == 0)
        seed_arr = np.int32(seed)
        unet = self.unet_params if steps > 0 else self.codec_params   # unused when steps == 0
        pending = None
        for first in range(0, p.num_windows, b):
            ids = np.arange(first, first + b)
            valid = ids < p.num_windows
            ids = np.where(valid, ids, p.num_windows - 1)          # pad the last batch
            y, lv = windows.gather(y_hat, levels, p, ids)
            out = fn(self.codec_params, unet, y, lv, p.starts[ids], seed_arr)
            self.calls += 1
            if pending is not None:
                self._blend(blender, *pending)
            pending = (out, ids[valid])
        if pending is not None:
            self._blend(blender, *pending)
        return blender.result()

    @staticmethod
    def _blend(blender, out, ids):
        out = np.asarray(out)
        for j, i in enumerate(ids):
            blender.add(int(i), out[j])
