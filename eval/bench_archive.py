"""Archive decompression throughput: `pcdc decompress-batch` against decompressing the same files
one by one, same model and steps, measured in one run.

  python eval/bench_archive.py [--data ../shared/data/aerial/minsk_drone] [--limit 16]
      [--max-pixels 2100000] [--ratio 20] [--steps 0] [--devices 1 2 4] [--cli-files 16]
      [--model DIR] [--work outputs/bench_archive] [--out outputs/bench_archive.json]

The archive: the first --limit images of --data (at most --max-pixels each), compressed once
with `compress-batch` into --work/pcdc (reused by later runs). Then, each configuration in its
own process (simulated CPU devices through XLA_FLAGS; peak memory is that process's):
  batch     archive.decompress_batch over all local devices, for each --devices count: wall
            time, MP/s, the fraction of wall time the devices were computing, peak RSS; and
            over half the archive, to show that memory does not grow with the archive
  loop      api.decompress + write, file after file, in one process with the model loaded and
            compiled once (the best a script can do without the pipeline)
  cli-loop  `pcdc decompress` in a shell-style loop, one process per file (what users run
            without decompress-batch; includes start-up, model load and compilation per file)
Times of `batch` and `loop` exclude compilation: each process decodes one file first.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdc_jax import parallel  # noqa: E402  (imports no JAX backend; children choose devices)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "aerial" / "minsk_drone"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def child(args) -> dict:
    import jax

    from pcdc_jax import api, archive
    from pcdc_jax.data.images import write_image

    rt = api.load(args.model)
    work = Path(args.work)
    if args.child == "compress":
        sources, _ = archive.find_inputs(str(work / "images"), (".png",), "image")
        s = archive.compress_batch(sources, work / "pcdc", rt, ratio=args.ratio, policy="uniform")
        return {"mode": "compress", **s.to_json()}
    sources, _ = archive.find_inputs(str(work / "pcdc"), (".pcdc",), ".pcdc")
    sources = sources[:args.files] if args.files else sources
    warm = sources[0].read_bytes()
    api.decompress(warm, rt, steps=args.steps)                       # compile
    out = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=work))
    try:
        if args.child == "batch":
            s = archive.decompress_batch(sources, out, rt, steps=args.steps, workers=args.workers)
            if not s.ok:
                raise SystemExit(f"batch failed: {s.failed}")
            row = {"seconds": s.seconds, "megapixels": s.megapixels, "device_busy": s.device_busy}
        else:
            t0, mp = time.perf_counter(), 0.0
            for i, src in enumerate(sources):
                image = api.decompress(src.read_bytes(), rt, steps=args.steps)
                write_image(out / f"{i}.png", image)
                mp += image.shape[0] * image.shape[1] / 1e6
            row = {"seconds": time.perf_counter() - t0, "megapixels": mp, "device_busy": None}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"mode": args.child, "devices": len(jax.local_devices()), "files": len(sources),
            "steps": args.steps, **row, "mp_per_s": row["megapixels"] / row["seconds"],
            "peak_rss_gib": _peak_rss_gib(), "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind}


def _run_child(args, mode: str, devices: int, files: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", args.work, "--steps", str(args.steps),
           "--ratio", str(args.ratio), "--files", str(files), "--workers", str(args.workers or 0)]
    if args.model:
        cmd += ["--model", args.model]
    env = parallel.simulated_devices_env(devices)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def _prepare_images(args) -> int:
    """Copies the chosen frames as PNG into work/images (the archive's originals)."""
    from PIL import Image

    images = Path(args.work) / "images"
    images.mkdir(parents=True, exist_ok=True)
    chosen = []
    for f in sorted(Path(args.data).iterdir()):
        if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            continue
        with Image.open(f) as im:
            if im.width * im.height > args.max_pixels:
                continue
            target = images / (f.stem + ".png")
            if not target.exists():
                im.convert("RGB").save(target)
        chosen.append(target)
        if len(chosen) == args.limit:
            break
    if len(chosen) < args.limit:
        raise SystemExit(f"only {len(chosen)} images of at most {args.max_pixels} pixels in {args.data}")
    return len(chosen)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-pixels", type=float, default=2.1e6)
    ap.add_argument("--ratio", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--cli-files", type=int, default=16, help="files of the `pcdc decompress` loop")
    ap.add_argument("--workers", type=int, help="host threads of decompress-batch")
    ap.add_argument("--model")
    ap.add_argument("--work", default="outputs/bench_archive")
    ap.add_argument("--out", default="outputs/bench_archive.json")
    ap.add_argument("--child", choices=("compress", "batch", "loop"), help=argparse.SUPPRESS)
    ap.add_argument("--files", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.workers = args.workers or None
        print(json.dumps(child(args)), flush=True)
        return
    n = _prepare_images(args)
    top = max(args.devices)
    rows = [_run_child(args, "compress", top)]
    for d in args.devices:
        rows.append(_run_child(args, "batch", d))
    rows.append(_run_child(args, "batch", top, files=n // 2))
    rows.append(_run_child(args, "loop", top))
    files = sorted((Path(args.work) / "pcdc").glob("*.pcdc"))[:args.cli_files]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-", dir=args.work))
    env = parallel.simulated_devices_env(top)
    t0, mp = time.perf_counter(), 0.0
    for f in files:
        cmd = [sys.executable, "-m", "pcdc_jax.cli", "decompress", str(f), "-o", str(tmp / (f.stem + ".png")),
               "--steps", str(args.steps), "--quiet"] + (["--model", args.model] if args.model else [])
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)
        w, h = _size(tmp / (f.stem + ".png"))
        mp += w * h / 1e6
    cli = {"mode": "cli-loop", "devices": top, "files": len(files), "steps": args.steps,
           "seconds": time.perf_counter() - t0, "megapixels": mp}
    cli["mp_per_s"] = mp / cli["seconds"]
    shutil.rmtree(tmp, ignore_errors=True)
    rows.append(cli)
    print(json.dumps(cli), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join([Path(__file__).name] + (argv or sys.argv[1:])),
                                          "cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    print(table(rows, top))


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def table(rows: list[dict], top: int) -> str:
    """Markdown: every decompression row, and batch throughput over each loop's (same devices)."""
    batch = next(r for r in rows if r["mode"] == "batch" and r["devices"] == top
                 and r["files"] == max(x["files"] for x in rows if x["mode"] == "batch"))
    lines = ["| run | devices | files | MP | s | MP/s | devices busy | peak RSS GiB | batch speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["mode"] == "compress":
            continue
        busy = f"{100 * r['device_busy']:.0f}%" if r.get("device_busy") is not None else "-"
        rss = f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else "-"
        speed = f"{batch['mp_per_s'] / r['mp_per_s']:.2f}x" if r["mode"] != "batch" else "-"
        lines.append(f"| {r['mode']} | {r['devices']} | {r['files']} | {r['megapixels']:.1f} | "
                     f"{r['seconds']:.1f} | {r['mp_per_s']:.3f} | {busy} | {rss} | {speed} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
