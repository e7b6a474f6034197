"""Block-level allocation policies side by side: PPO against uniform (CDC), greedy and hf.

  python eval/compare_allocation.py [--model DIR] [--data ../shared/data/kodak] [--limit N]
      [--ratio 20] [--policies ppo uniform greedy hf] [--adapt-steps 0] [--steps 16]
      [--out outputs/compare_allocation_r20.json]

Every image is compressed at the same ratio by every policy (the real file, never over budget),
decoded with the model's diffusion decoder at --steps, and scored: PSNR, SSIM, LPIPS (AlexNet),
DISTS and the reward's utility U = -(MSE + 0.5 (1 - SSIM) + 0.2 LPIPS + 0.2 DISTS) (PCDC eq. 5).
bpp is from the file size. An image whose coarsest level does not fit the ratio is skipped and
named. With --adapt-steps N > 0, a "ppo+tta" row adds test-time adaptation. Prints a markdown
table of the means and writes the per-image values as JSON.
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
from pcdc_jax.data.datasets import list_images  # noqa: E402
from pcdc_jax.data.images import atomic_write_bytes, read_image  # noqa: E402
from pcdc_jax.errors import BudgetError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("psnr", "ssim", "lpips_alex", "dists")


def utility(v: dict, cfg) -> float:
    ac = cfg.allocation
    mse = 10 ** (-v["psnr"] / 10)
    return -(ac.w_mse * mse + ac.w_ssim * (1 - v["ssim"]) + ac.w_lpips * v["lpips_alex"]
             + ac.w_dists * v["dists"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--ratio", type=float, default=20.0)
    ap.add_argument("--policies", nargs="+", default=list(api.POLICIES), choices=api.POLICIES)
    ap.add_argument("--adapt-steps", type=int, default=0)
    ap.add_argument("--steps", type=int, help="DDIM steps (default: the model's)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rt = api.load(args.model)
    steps = rt.default_steps if args.steps is None else args.steps
    variants = [(p, p, 0) for p in args.policies]
    if args.adapt_steps:
        variants.append(("ppo+tta", "ppo", args.adapt_steps))
    try:
        files = list_images(args.data)[: args.limit]
    except FileNotFoundError as e:
        ap.error(str(e))
    per_image, skipped = [], []
    for f in files:
        im = read_image(f, notices=[])
        row = {"image": f.name}
        try:
            for name, pol, adapt in variants:
                t = time.perf_counter()
                r = api.compress(im, rt, ratio=args.ratio, policy=pol, adapt_steps=adapt)
                enc = time.perf_counter() - t
                out = api.decompress(r.data, rt, steps=steps)
                v = {m: float(a[0]) for m, a in metrics.evaluate(im, out, METRICS).items()}
                v.update(u=utility(v, rt.cfg), bpp=8 * len(r.data) / (im.shape[0] * im.shape[1]),
                         encode_s=enc, used=r.policy,
                         levels=np.bincount(r.levels.ravel(), minlength=rt.num_levels).tolist())
                row[name] = v
        except BudgetError as e:
            print(f"skipping {f.name}: {e}", file=sys.stderr)
            skipped.append({"image": f.name, "reason": str(e)})
            continue
        per_image.append(row)
        print(json.dumps(row), flush=True)
    if not per_image:
        raise SystemExit(f"compare_allocation: error: no image of {args.data} fits ratio {args.ratio:g}")
    names = [v[0] for v in variants]
    means = {n: {k: float(np.mean([r[n][k] for r in per_image]))
                 for k in (*METRICS, "u", "bpp", "encode_s")} for n in names}
    wins = {n: int(sum(r[n]["u"] >= max(r[m]["u"] for m in names) for r in per_image)) for n in names}
    out = Path(args.out or ROOT / "outputs" / f"compare_allocation_r{args.ratio:g}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps({"data": args.data, "ratio": args.ratio, "steps": steps,
                                        "means": means, "best_u_count": wins, "skipped": skipped,
                                        "images": per_image}, indent=2).encode())
    print(f"\n{len(per_image)} images of {args.data} at ratio {args.ratio:g}, {steps} DDIM steps"
          + (f"; skipped {', '.join(s['image'] for s in skipped)}" if skipped else ""))
    print("| policy | bpp | PSNR dB | SSIM | LPIPS | DISTS | U (eq. 5) | best U on | encode s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        m = means[n]
        print(f"| {n} | {m['bpp']:.3f} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['lpips_alex']:.4f} | "
              f"{m['dists']:.4f} | {m['u']:.4f} | {wins[n]}/{len(per_image)} | {m['encode_s']:.2f} |")


if __name__ == "__main__":
    main()
