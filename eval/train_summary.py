"""Summarise a run's metrics.jsonl: chosen metrics and steps/s at elapsed-time marks.

  python eval/train_summary.py runs/small_v2 [--minutes 10 20 40 60 90] [--keys bpp psnr]
  python eval/train_summary.py runs/unet_small --keys loss psnr_base psnr_x0 lpips_x0

Each row averages the `--window` steps logged before the mark (the run's own clock, so a resumed
run counts its wall time since the first logged step).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 20, 40, 60, 90])
    ap.add_argument("--keys", nargs="+", default=["bpp", "psnr"], help="metrics.jsonl fields to show")
    ap.add_argument("--window", type=int, default=100, help="steps averaged before each mark")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in open(Path(args.run) / "metrics.jsonl")]
    t0 = rows[0]["time"] - rows[0]["step"] / rows[0]["steps_per_s"]
    print("| minutes | step | " + " | ".join(args.keys) + " | steps/s |")
    print("|---|---|" + "---|" * len(args.keys) + "---|")
    end = rows[-1]["time"] - t0
    for minutes in [m for m in args.minutes if 60 * m < end] + [None]:
        upto = [r for r in rows if minutes is None or r["time"] - t0 <= 60 * minutes]
        if not upto:
            continue
        last = upto[-1]["step"]
        win = [r for r in upto if r["step"] > last - args.window]
        label = f"{minutes:g}" if minutes is not None else f"{(upto[-1]['time'] - t0) / 60:.0f} (end)"
        print(f"| {label} | {last} | " + " | ".join(f"{np.mean([r[k] for r in win]):.4g}" for k in args.keys)
              + f" | {np.mean([r['steps_per_s'] for r in win]):.2f} |")


if __name__ == "__main__":
    main()
