"""Whole archives in, whole archives out, as one pipeline: `pcdc compress-batch` and
`pcdc decompress-batch`.

Decompressing many .pcdc files:

  inputs (a folder, a glob or a .tar; this process's share when several processes run)
  -> host workers: read, parse and check, entropy-decode, dequantize   (at most `prefetch` files ahead)
  -> this thread: windows of every file packed into full device batches (`WindowStream`, at most
     `max_open` images open), one jitted call per batch sharded over the local devices, each
     batch blended while the next runs
  -> writer threads: crop, encode PNG or TIFF (GeoTIFF tags restored), write to a temporary name
     and rename                                                      (at most 2 x `writers` queued)

Every stage is bounded, so memory does not grow with the archive. A file that fails
(unreadable, not a .pcdc file, truncated, corrupted, another model's) is recorded and skipped
and the rest completes. Outputs only ever appear complete (renamed into place), so a rerun skips
the outputs that exist (unless `overwrite`) and removes temporaries a killed run left behind.
Compressing mirrors this with images in and .pcdc files out.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import os
import tarfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np

from pcdc_jax import api
from pcdc_jax.data import geotiff
from pcdc_jax.data.images import atomic_write_bytes, read_image, to_uint8, write_image
from pcdc_jax.errors import PCDCError

PCDC_SUFFIX = ".pcdc"
OUTPUT_FORMATS = ("png", "tif")


# ---------------------------------------------------------------------------------- inputs
class Source:
    """One input file: `name` is its path below the input root ('/'-separated), mirrored under
    the output folder; `read_bytes()` reads it from disk or from its tar archive."""

    def __init__(self, name: str, path: Path | None = None, tar: "_Tar | None" = None,
                 member: tarfile.TarInfo | None = None):
        self.name, self.path, self._tar, self._member = name, path, tar, member

    def read_bytes(self) -> bytes:
        if self._tar is not None:
            return self._tar.read(self._member)
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise PCDCError(f"cannot read ({e.strerror})") from None

    def __repr__(self) -> str:
        return f"Source({self.name!r})"


class _Tar:
    """A tar archive read by several worker threads (tarfile itself is not thread-safe)."""

    def __init__(self, path: Path):
        self.tar = tarfile.open(path)
        self.lock = threading.Lock()

    def read(self, member: tarfile.TarInfo) -> bytes:
        with self.lock:
            try:
                return self.tar.extractfile(member).read()
            except (OSError, tarfile.TarError, EOFError) as e:
                raise PCDCError(f"cannot read from the archive ({e})") from None


def find_inputs(spec: str, suffixes: Iterable[str], what: str,
                tar: bool = True) -> tuple[list[Source], list[tuple[str, str]]]:
    """The input files of `spec` with one of `suffixes`, sorted by name, and the members that
    were refused ([(name, reason)]: a tar member whose path leaves the output folder).

    spec: a folder (searched recursively, hidden files and folders left out), one file, a tar
    archive (`.tar`, `.tar.gz`, ...) or a glob pattern (`**` recursive); names are relative to the
    folder, the archive's root or the pattern's fixed leading folders. PCDCError if nothing
    matches, or for a tar archive when `tar` is False.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    path = Path(spec)
    refused: list[tuple[str, str]] = []
    if path.is_dir():
        files = [(f.relative_to(path).as_posix(), f) for f in path.rglob("*")
                 if f.is_file() and f.suffix.lower() in suffixes
                 and not any(p.startswith(".") for p in f.relative_to(path).parts)]
        sources = [Source(n, f) for n, f in files]
    elif path.is_file() and path.suffix.lower() not in suffixes and tarfile.is_tarfile(path):
        if not tar:
            raise PCDCError(f"{spec}: a tar archive; extract it first (this command reads "
                            "folders, globs and single files)")
        archive = _Tar(path)
        sources = []
        for m in archive.tar.getmembers():
            name = PurePosixPath(m.name)
            if not m.isfile() or name.suffix.lower() not in suffixes:
                continue
            if name.is_absolute() or ".." in name.parts:
                refused.append((m.name, "path leaves the output folder; not extracted"))
                continue
            sources.append(Source(name.as_posix().removeprefix("./"), tar=archive, member=m))
    elif path.is_file():
        sources = [Source(path.name, path)]
    else:
        parts = Path(spec).parts
        fixed = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        sources = [Source(Path(f).relative_to(root).as_posix(), Path(f))
                   for f in glob.glob(spec, recursive=True)
                   if Path(f).is_file() and Path(f).suffix.lower() in suffixes]
    sources.sort(key=lambda s: s.name)
    if not sources and not refused:
        raise PCDCError(f"{spec}: no {what} files found")
    return sources, refused


def process_share(sources: list[Source]) -> list[Source]:
    """This process's files when several processes split an archive (jax.distributed): every
    process-count-th file from its index, so the processes' outputs never overlap."""
    import jax
    return sources[jax.process_index()::jax.process_count()]


# ---------------------------------------------------------------------------------- summary
@dataclasses.dataclass
class Summary:
    """What a batch run did: files done, skipped (already complete) and failed (name, reason)."""

    command: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    megapixels: float = 0.0
    seconds: float = 0.0
    device_seconds: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def device_busy(self) -> float | None:
        """Fraction of the wall time the devices spent computing (decompression)."""
        if self.device_seconds is None or self.seconds <= 0:
            return None
        return min(1.0, self.device_seconds / self.seconds)

    def lines(self) -> list[str]:
        verb = "decoded" if self.command.startswith("decompress") else "compressed"
        rate = f" ({self.megapixels / self.seconds:.2f} MP/s)" if self.seconds > 0 and self.done else ""
        head = (f"{self.command}: {self.done} {verb}, {self.skipped} skipped (already complete), "
                f"{len(self.failed)} failed of {self.total}; {self.megapixels:.1f} MP in "
                f"{self.seconds:.1f} s{rate}")
        if self.device_busy is not None and self.done:
            head += f", devices busy {100 * self.device_busy:.0f}%"
        return ([head] + [f"  failed: {n}: {r}" for n, r in self.failed]
                + [f"  note: {n}" for n in self.notes])

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["failed"] = [{"file": n, "error": r} for n, r in self.failed]
        d["device_busy"] = self.device_busy
        return d


# ---------------------------------------------------------------------------------- plumbing
def _ahead(pool: concurrent.futures.Executor, fn: Callable, items: Iterable, n: int) -> Iterator:
    """(item, future of fn(item)) in order, with at most `n` submitted and not yet consumed."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= n:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, PCDCError) else f"{type(e).__name__}: {e}"


class _Writers:
    """Background writers with a bounded queue; failures go to the summary."""

    def __init__(self, summary: Summary, threads: int, on_written: Callable[[float], None]):
        self.summary, self.on_written = summary, on_written
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="pcdc-write")
        self.slots = threading.BoundedSemaphore(2 * threads)
        self.lock = threading.Lock()

    def submit(self, name: str, megapixels: float, write: Callable[[], None]) -> None:
        self.slots.acquire()

        def run():
            try:
                write()
            except (PCDCError, OSError, ValueError) as e:
                with self.lock:
                    self.summary.failed.append((name, f"cannot write output ({_describe(e)})"))
                    self.on_written(0.0)
                return
            finally:
                self.slots.release()
            with self.lock:
                self.summary.done += 1
                self.summary.megapixels += megapixels
                self.on_written(megapixels)

        self.pool.submit(run)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _pending(sources: list[Source], out_dir: Path, suffix: str, overwrite: bool,
             summary: Summary) -> list[tuple[Source, Path]]:
    """(source, output path) of the files to do: outputs that exist are complete and skipped
    (unless overwrite); temporaries of a killed run are removed; an output two inputs map to
    (a.png and a.jpg -> a.pcdc) fails for the second."""
    todo, claimed = [], {}
    for src in sources:
        out = out_dir / PurePosixPath(src.name).with_suffix(suffix)
        if out in claimed:
            summary.failed.append((src.name, f"output {out} is also the output of {claimed[out]}"))
            continue
        claimed[out] = src.name
        if out.exists() and not overwrite:
            summary.skipped += 1
            continue
        for stale in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        todo.append((src, out))
    return todo


def _progress(total: int, enabled: bool, unit: str):
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def _track(bar, t0: float) -> Callable[[float], None]:
    mp = [0.0]

    def written(megapixels: float) -> None:
        mp[0] += megapixels
        bar.update(1)
        bar.set_postfix_str(f"{mp[0]:.1f} MP, {mp[0] / max(time.perf_counter() - t0, 1e-9):.2f} MP/s",
                            refresh=False)

    return written


# ---------------------------------------------------------------------------------- decompress
@dataclasses.dataclass
class _Decoded:
    source: Source
    output: Path
    height: int
    width: int
    y_hat: np.ndarray
    levels: np.ndarray
    metadata: dict


def decompress_batch(sources: list[Source], out_dir: str | os.PathLike, runtime: api.Runtime, *,
                     fmt: str = "png", steps: int | None = None, seed: int = 0,
                     eta: float | None = None, t_start: float | None = None,
                     batch: int | None = None, devices: int | None = None,
                     overwrite: bool = False, workers: int | None = None,
                     prefetch: int | None = None, max_open: int = 4, writers: int = 2,
                     progress: bool = False, refused: Iterable[tuple[str, str]] = ()) -> Summary:
    """Decodes `sources` (.pcdc files) into `out_dir`/<name>.<fmt>, mirroring their names.

    Each image equals `api.decompress` of its file alone with the same settings (steps, seed,
    eta, t_start; any batch and device count). workers: host threads parsing and
    entropy-decoding (default: the CPU count, at most 8); prefetch: files decoded ahead of the
    devices (default workers + 1); max_open: images whose windows are being decoded at once.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    steps = runtime.default_steps if steps is None else steps
    out_dir = Path(out_dir)
    refused = list(refused)
    summary = Summary("decompress-batch", total=len(sources) + len(refused), failed=refused)
    stream = runtime.decoder(devices).stream(steps=steps, seed=seed, eta=eta, t_start=t_start,
                                             batch=batch, max_open=max_open, timeline=True)
    todo = _pending(sources, out_dir, "." + fmt, overwrite, summary)
    workers = workers or min(8, os.cpu_count() or 1)
    prefetch = prefetch or workers + 1
    geo_dropped = []

    def prepare(item: tuple[Source, Path]) -> _Decoded:
        src, out = item
        c = runtime.parse(src.read_bytes())
        return _Decoded(src, out, c.height, c.width, runtime.latent(c), c.levels, c.metadata)

    def write(d: _Decoded, canvas: np.ndarray) -> Callable[[], None]:
        def run():
            d.output.parent.mkdir(parents=True, exist_ok=True)
            write_image(d.output, to_uint8(canvas[:d.height, :d.width]), d.metadata)
        return run

    t0 = time.perf_counter()
    bar = _progress(len(todo), progress, "file")
    out = _Writers(summary, writers, _track(bar, t0))

    def drain():
        for d, canvas in stream.pop_done():
            out.submit(d.source.name, d.height * d.width / 1e6, write(d, canvas))

    try:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pcdc-read") as pool:
            for (src, _), fut in _ahead(pool, prepare, todo, prefetch):
                try:
                    d = fut.result()
                except (PCDCError, OSError) as e:
                    summary.failed.append((src.name, _describe(e)))
                    bar.update(1)
                    continue
                if d.metadata.get(geotiff.META_KEY) and fmt != "tif":
                    geo_dropped.append(src.name)
                stream.add(d.y_hat, d.levels, tag=d)
                d.y_hat = d.levels = None            # the stream holds them until it is done
                drain()
            stream.close()
            drain()
    finally:
        out.close()
        bar.close()
    summary.seconds = time.perf_counter() - t0
    summary.device_seconds = stream.busy_seconds
    if geo_dropped:
        summary.notes.append(f"{len(geo_dropped)} file(s) carry GeoTIFF tags that {fmt.upper()} "
                             f"cannot hold (e.g. {geo_dropped[0]}); use --format tif to keep them")
    return summary


# ---------------------------------------------------------------------------------- compress
def compress_batch(sources: list[Source], out_dir: str | os.PathLike, runtime: api.Runtime, *,
                   ratio: float | None = None, bpp: float | None = None, level: int | None = None,
                   policy: str | None = None, overwrite: bool = False, workers: int | None = None,
                   writers: int = 2, progress: bool = False) -> Summary:
    """Compresses images into `out_dir`/<name>.pcdc, mirroring their names; each file is what
    `api.compress` writes for the image with the same settings, its GeoTIFF tags kept. An image
    that cannot be read, or does not fit its budget, fails alone."""
    if ratio is not None or bpp is not None:
        api.budget_bytes(1, 1, ratio, bpp)                      # checks the numbers once
    if policy is not None and policy not in api.POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(api.POLICIES)}")
    if level is not None and not 0 <= level < runtime.num_levels:
        raise ValueError(f"level must be in 0..{runtime.num_levels - 1}, got {level}")
    out_dir = Path(out_dir)
    summary = Summary("compress-batch", total=len(sources))
    todo = _pending(sources, out_dir, PCDC_SUFFIX, overwrite, summary)
    workers = workers or min(8, os.cpu_count() or 1)

    def read(item: tuple[Source, Path]):
        src, _ = item
        notices: list[str] = []
        return read_image(src.path, notices), geotiff.metadata_of(src.path), notices

    t0 = time.perf_counter()
    bar = _progress(len(todo), progress, "file")
    out = _Writers(summary, writers, _track(bar, t0))
    try:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pcdc-read") as pool:
            for (src, path), fut in _ahead(pool, read, todo, workers + 1):
                try:
                    image, metadata, notices = fut.result()
                    result = api.compress(image, runtime, ratio=ratio, bpp=bpp, level=level,
                                          policy=policy, metadata=metadata)
                except (PCDCError, OSError) as e:
                    summary.failed.append((src.name, _describe(e)))
                    bar.update(1)
                    continue
                summary.notes += notices

                def run(path=path, data=result.data):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(path, data)

                out.submit(src.name, image.shape[0] * image.shape[1] / 1e6, run)
    finally:
        out.close()
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
