"""Throughput of every metric (megapixels/s of image pairs), and a whole drone frame through
`metrics.evaluate` (tiled LPIPS/DISTS) with its peak memory.

  python eval/bench_metrics.py [--size 256 --batch 8 --repeats 3] [--large IMAGE] [--metrics NAME ...]
"""
from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pcdc_jax import metrics  # noqa: E402
from pcdc_jax.data.images import read_image  # noqa: E402


def _jpeg(a: np.ndarray, quality: int = 30) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _time(f, *args, repeats):
    jax.block_until_ready(f(*args))                      # compile + warm up
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(*args))
    return (time.perf_counter() - t) / repeats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kodak", default=str(Path(__file__).resolve().parents[2] / "shared/data/kodak"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large", help="also evaluate this (large) image against a JPEG copy of itself")
    ap.add_argument("--metrics", nargs="+", default=list(metrics.ALL), choices=metrics.ALL)
    args = ap.parse_args(argv)

    s = args.size
    imgs = [read_image(p)[:s, :s] for p in sorted(Path(args.kodak).glob("*.png"))[:args.batch]]
    x = jnp.asarray(metrics.to_float(np.stack(imgs)))
    y = jnp.asarray(metrics.to_float(np.stack([_jpeg(a) for a in imgs])))
    mp = args.batch * s * s / 1e6
    print(f"| metric | value MP/s | value + gradient MP/s |  ({args.batch} pairs of {s}x{s}, "
          f"{jax.device_count()} {jax.default_backend()} device(s))")
    print("|---|---|---|")
    for name in args.metrics:
        f = metrics.function(name)
        fwd = _time(jax.jit(f), x, y, repeats=args.repeats)
        grad = _time(jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, b)))), x, y, repeats=args.repeats)
        print(f"| {name} | {mp / fwd:.2f} | {mp / grad:.2f} |", flush=True)

    if args.large:
        a = read_image(args.large)
        b = _jpeg(a)
        h, w = a.shape[:2]
        print(f"\n| metric | value | seconds |  ({Path(args.large).name}, {w}x{h}, vs JPEG q30 of itself)")
        print("|---|---|---|")
        for name in args.metrics:
            t = time.perf_counter()
            v = metrics.evaluate(a, b, (name,))[name][0]
            print(f"| {name} | {v:.4f} | {time.perf_counter() - t:.1f} |", flush=True)
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
