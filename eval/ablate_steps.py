"""Sampling-step ablation: quality and decode time of the diffusion decoder at each step count.

  python eval/ablate_steps.py [--model DIR] [--data ../shared/data/kodak] [--limit N]
                              [--level 1 | --ratio R]
                              [--steps 0 1 2 4 8 16 32 64] [--seed 0]
                              [--metrics psnr ms_ssim lpips_alex dists]
                              [--eta E] [--t-start T]
                              [--out outputs/ablate_steps.json] [--plot outputs/ablate_steps.png]

Every image is compressed once at a uniform level (`--level`), or at the compression ratio
`--ratio` as `pcdc compress --ratio` does (the model's default policy); an image that cannot fit
the ratio is skipped and named; the same file is decoded at every step count
(steps=0 is the context decoder's x_base). Also reports the seam ratio of the windows
(`diffusion.windows.seam_ratio`, ~1 = no visible window edges). Decode time excludes the first
(compiling) decode of each step count and covers the whole of `api.decompress`. The table is
printed as markdown; --plot draws each metric and the decode time against the step count.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pcdc_jax import api, metrics  # noqa: E402
from pcdc_jax.codec import bitstream  # noqa: E402
from pcdc_jax.data.datasets import list_images  # noqa: E402
from pcdc_jax.data.images import atomic_write_bytes, read_image  # noqa: E402
from pcdc_jax.diffusion import windows  # noqa: E402
from pcdc_jax.evaluation import figures  # noqa: E402
from pcdc_jax.errors import BudgetError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int)
    target = ap.add_mutually_exclusive_group()
    target.add_argument("--level", type=int)
    target.add_argument("--ratio", type=float, help="compression ratio against 24-bit RGB")
    ap.add_argument("--steps", nargs="+", type=int, default=[0, 1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--metrics", nargs="+", default=["psnr", "ms_ssim", "lpips_alex", "dists"], choices=metrics.ALL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eta", type=float, help="DDIM eta (default: the model's)")
    ap.add_argument("--t-start", type=float, help="DDIM start time (default: the model's)")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "ablate_steps.json"))
    ap.add_argument("--plot", help="PNG of the metrics and decode time against steps (default: --out with .png)")
    args = ap.parse_args(argv)
    try:
        files = list_images(args.data)[: args.limit]
    except FileNotFoundError as e:
        ap.error(str(e))
    rt = api.load(args.model)
    images = [read_image(f, notices=[]) for f in files]
    if args.ratio is None and args.level is None:
        args.level = 1
    kept, skipped = [], []
    for f, im in zip(files, images):
        try:
            kept.append((f, im, api.compress(im, rt, level=args.level, ratio=args.ratio).data))
        except BudgetError as e:           # --ratio beyond what the coarsest level reaches
            print(f"skipping {f.name}: {e}", file=sys.stderr)
            skipped.append({"image": f.name, "reason": str(e)})
    if not kept:
        raise SystemExit(f"ablate_steps: error: no image of {args.data} fits ratio {args.ratio:g}")
    files, images, coded = (list(c) for c in zip(*kept))
    bpp = float(np.mean([8 * len(d) / (im.shape[0] * im.shape[1]) for d, im in zip(coded, images)]))
    rows = []
    for steps in args.steps:
        decode = dict(steps=steps, seed=args.seed, eta=args.eta, t_start=args.t_start)
        api.decompress(coded[0], rt, **decode)                              # compile
        seconds, values, seams = 0.0, {m: [] for m in args.metrics}, []
        for im, data in zip(images, coded):
            t = time.perf_counter()
            out = api.decompress(data, rt, **decode)
            seconds += time.perf_counter() - t
            for m, v in metrics.evaluate(im, out, args.metrics).items():
                values[m].append(float(v[0]))
            plan = windows.plan(*bitstream.latent_shape(*im.shape[:2]), rt.cfg)
            seams.append(windows.seam_ratio(out, plan))
        mp = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
        rows.append({"steps": steps, "eta": args.eta, "t_start": args.t_start, "bpp": bpp,
                     "s_per_mp": seconds / mp,
                     "seam_ratio": float(np.nanmean(seams)) if not np.isnan(seams).all() else None,
                     **{m: float(np.mean(v)) for m, v in values.items()}})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps({"data": args.data, "images": [f.name for f in files],
                                        "skipped": skipped, "level": args.level, "ratio": args.ratio,
                                        "rows": rows}, indent=2).encode())
    figures.steps_ablation(rows, args.metrics, Path(args.plot) if args.plot else out.with_suffix(".png"),
                           f"{Path(args.data).name}: {len(files)} images, {bpp:.3f} bpp")
    target = f"level {args.level}" if args.ratio is None else f"ratio {args.ratio:g}"
    if skipped:
        target += f"; {len(skipped)} skipped, too detailed for it: {', '.join(s['image'] for s in skipped)}"
    print(f"\n{len(files)} images from {args.data}, {target} ({bpp:.3f} bpp), seed {args.seed}, "
          f"eta {args.eta if args.eta is not None else rt.cfg.diffusion.eta}, t_start "
          f"{args.t_start if args.t_start is not None else rt.cfg.diffusion.t_start}")
    print("| steps | " + " | ".join(args.metrics) + " | seam ratio | decode s/MP |")
    print("|---|" + "---|" * (len(args.metrics) + 2))
    for r in rows:
        seam = f"{r['seam_ratio']:.3f}" if r["seam_ratio"] is not None else "-"
        print(f"| {r['steps']} | " + " | ".join(f"{r[m]:.4f}" for m in args.metrics)
              + f" | {seam} | {r['s_per_mp']:.2f} |")


if __name__ == "__main__":
    main()
