"""Decoding latent canvases through batches of windows sharded over the local devices.

The host cuts each dequantized latent into window crops (`windows.plan`), packs them into
batches of `batch` windows (split over the mesh's data axis), runs one jitted call per batch,
and blends the returned windows into their canvases while the next batch runs. A
`WindowStream` takes many canvases at once, so windows of different images fill the same
batches (archive decoding); `WindowDecoder.decode` is a stream of one canvas. Device memory is
bounded by the window batch; the host holds the latents and output canvases of the open images.
"""
from __future__ import annotations

import collections
import math
import queue
import threading
import time
from typing import Any, Hashable

import jax
import numpy as np

from pcdc_jax import parallel
from pcdc_jax.config import Config
from pcdc_jax.diffusion import sampler, windows


class WindowDecoder:
    """Decodes latents of any size with a model's context decoder and (optionally) its U-Net,
    over the first `devices` of this process's devices (all by default).

    `calls` counts jitted calls (one per window batch) and `traces` counts compilations.
    """

    def __init__(self, cfg: Config, codec_params: Any, unet_params: Any | None = None,
                 devices: int | None = None):
        self.cfg = cfg
        self.mesh = parallel.make_mesh(devices, local=True)
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

    def program(self, crop_sizes, steps: int, eta: float, t_start: float):
        """The jitted batch decoder for windows of `crop_sizes` (compiled once per key)."""
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

    def stream(self, *, steps: int = 0, seed: int = 0, eta: float | None = None,
               t_start: float | None = None, batch: int | None = None,
               max_open: int | None = None, timeline: bool = False) -> WindowStream:
        """A stream decoding many canvases with these settings (see `WindowStream`)."""
        return WindowStream(self, steps=steps, seed=seed, eta=eta, t_start=t_start, batch=batch,
                            max_open=max_open, timeline=timeline)

    def decode(self, y_hat: np.ndarray, levels: np.ndarray, *, steps: int = 0, seed: int = 0,
               eta: float | None = None, t_start: float | None = None,
               batch: int | None = None) -> np.ndarray:
        """y_hat float32 [hl, wl, M], levels [hl, wl] -> float32 canvas [16 hl, 16 wl, 3].

        steps=0 is the context decoder's x_base (windows placed without blending, exact);
        steps>0 runs DDIM with the U-Net from t_start and blends overlapping windows; eta and
        t_start default to the model's.
        """
        s = self.stream(steps=steps, seed=seed, eta=eta, t_start=t_start, batch=batch)
        s.add(y_hat, levels)
        s.close()
        return s.pop_done()[0][1]


class _Canvas:
    __slots__ = ("id", "tag", "y_hat", "levels", "plan", "blender", "left")

    def __init__(self, id_, tag, y_hat, levels, plan, hard):
        self.id, self.tag, self.y_hat, self.levels, self.plan = id_, tag, y_hat, levels, plan
        self.blender = windows.Blender(plan, hard=hard)
        self.left = plan.num_windows          # windows not yet blended


class WindowStream:
    """Decodes many canvases through one stream of full window batches.

    `add(y_hat, levels, tag)` queues every window of a canvas. Windows with the same crop sizes
    (every window of an image larger than a window plus its halo) share batches and one
    compiled program, so small images and the last windows of large ones fill batches together.
    A canvas is done when its last window is blended; `pop_done()` returns the finished
    (tag, float32 canvas) pairs. At most `max_open` canvases (default: unbounded) are held: past
    that, part-full batches are sent to finish the oldest. `close()` sends everything.

    Each canvas decodes exactly as it would alone: a window's pixels never depend on the other
    windows of its batch or their images (sampler.window_sampler), and its noise only on its
    position in its own canvas and the seed.

    With `timeline=True` a thread records when each call finishes, and `busy_seconds` is the
    time the devices spent computing (calls run in order, so call k runs from the later of its
    dispatch and call k-1's end until its own end).
    """

    def __init__(self, decoder: WindowDecoder, *, steps: int, seed: int, eta: float | None,
                 t_start: float | None, batch: int | None, max_open: int | None = None,
                 timeline: bool = False):
        cfg = decoder.cfg.diffusion
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if steps > 0 and not decoder.has_diffusion:
            raise ValueError("this model has no diffusion decoder (U-Net); decode with steps=0")
        if not 0 <= seed < 2 ** 31:
            raise ValueError(f"seed must be in [0, 2**31), got {seed}")
        self.eta = cfg.eta if eta is None else float(eta)
        self.t_start = cfg.t_start if t_start is None else float(t_start)
        if not 0.0 < self.t_start <= 1.0:
            raise ValueError(f"t_start must be in (0, 1], got {self.t_start}")
        if max_open is not None and max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.decoder, self.steps, self.max_open = decoder, steps, max_open
        self.batch = decoder.batch_size(batch)
        mesh = decoder.mesh
        self._sharded = parallel.batch_sharded(mesh)
        self._seed = jax.device_put(np.int32(seed), parallel.replicated(mesh))
        self._unet = decoder.unet_params if steps > 0 else decoder.codec_params  # unused at 0
        self._queues: dict[Hashable, list[tuple[_Canvas, int]]] = {}
        self._open: collections.OrderedDict[int, _Canvas] = collections.OrderedDict()
        self._inflight: collections.deque = collections.deque()
        self._done: list[tuple[Any, np.ndarray]] = []
        self._ids = 0
        self._intervals: list[tuple[float, float]] = []
        self._watch: queue.Queue | None = None
        if timeline:
            self._watch = queue.Queue()
            self._watcher = threading.Thread(target=self._watch_calls, daemon=True)
            self._watcher.start()

    # ------------------------------------------------------------------ feeding
    def add(self, y_hat: np.ndarray, levels: np.ndarray, tag: Any = None) -> None:
        """Queues a canvas: y_hat float32 [hl, wl, M], levels [hl, wl]; may run full batches."""
        c = _Canvas(self._ids, tag, y_hat, levels, windows.plan(*levels.shape, self.decoder.cfg),
                    hard=self.steps == 0)
        self._open[c.id] = c
        self._ids += 1
        q = self._queues.setdefault(c.plan.crop_sizes, [])
        for i in range(c.plan.num_windows):
            q.append((c, i))
            if len(q) == self.batch:
                self._dispatch(c.plan.crop_sizes)
        while self.max_open is not None and len(self._open) > self.max_open:
            oldest = next(iter(self._open.values()))
            key = oldest.plan.crop_sizes
            if any(e[0] is oldest for e in self._queues.get(key, ())):
                self._dispatch(key)           # a part-full batch, to finish the oldest canvas
            else:
                self._blend_oldest()

    def close(self) -> None:
        """Sends every queued window and blends everything (then all canvases are done)."""
        for key in list(self._queues):
            if self._queues[key]:
                self._dispatch(key)
        while self._inflight:
            self._blend_oldest()
        if self._watch is not None:
            self._watch.put(None)
            self._watcher.join()
            self._watch = None

    def pop_done(self) -> list[tuple[Any, np.ndarray]]:
        """The canvases finished since the last call: [(tag, float32 [16 hl, 16 wl, 3])]."""
        done, self._done = self._done, []
        return done

    @property
    def open(self) -> int:
        """Canvases added and not yet finished."""
        return len(self._open)

    @property
    def busy_seconds(self) -> float:
        """Device compute time so far (timeline=True; the calls finished so far)."""
        busy, last = 0.0, -math.inf
        for start, end in self._intervals:
            busy += max(0.0, end - max(start, last))
            last = end
        return busy

    # ------------------------------------------------------------------ internals
    def _dispatch(self, key) -> None:
        entries = self._queues[key][:self.batch]
        del self._queues[key][:self.batch]
        pad = entries + [entries[-1]] * (self.batch - len(entries))   # fill the last batch
        ys, lvs, starts = [], [], []
        for c, i in pad:
            y, lv = windows.gather(c.y_hat, c.levels, c.plan, [i])
            ys.append(y[0])
            lvs.append(lv[0])
            starts.append(c.plan.starts[i])
        fn = self.decoder.program(key, self.steps, self.eta, self.t_start)
        t0 = time.perf_counter()
        # Placed explicitly: with several processes, jit takes no host arrays for sharded inputs.
        y, lv, st = jax.device_put((np.stack(ys), np.stack(lvs), np.stack(starts)), self._sharded)
        out = fn(self.decoder.codec_params, self._unet, y, lv, st, self._seed)
        self.decoder.calls += 1
        if self._watch is not None:
            self._watch.put((t0, out))
        self._inflight.append((out, entries))
        while len(self._inflight) > 1:          # blend call k-1 while call k runs
            self._blend_oldest()

    def _blend_oldest(self) -> None:
        out, entries = self._inflight.popleft()
        out = np.asarray(out)
        for j, (c, i) in enumerate(entries):
            c.blender.add(i, out[j])
            c.left -= 1
            if c.left == 0:
                self._finish(c)

    def _finish(self, c: _Canvas) -> None:
        del self._open[c.id]
        self._done.append((c.tag, c.blender.result()))
        c.y_hat = c.levels = c.blender = None

    def _watch_calls(self) -> None:
        while (item := self._watch.get()) is not None:
            t0, out = item
            jax.block_until_ready(out)
            self._intervals.append((t0, time.perf_counter()))
