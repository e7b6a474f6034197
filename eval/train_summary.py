"""Summarise a run's metrics.jsonl: a table of metrics at elapsed-time marks, and a PNG figure of
the training curves.

  python eval/train_summary.py runs/cpu [--minutes 10 20 40 60 90] [--keys bpp psnr]
  python eval/train_summary.py runs/unet_chain --keys loss psnr_base,psnr_x0 \
      lpips_chain,lpips_chain_base --plot curves.png

Each row averages the `--window` steps logged before the mark; minutes are training time (each
logged interval at its logged speed), so the pauses of a run resumed across sessions do not
count. Steps logged twice (a run resumed from an earlier checkpoint) count once, with the later
value. The figure has one panel per key (or per comma-joined group of keys) against the step,
the raw values faint and a moving average over `--window` steps on top.
"""
from __future__ import annotations

import argparse
import json
import io
from pathlib import Path

import numpy as np

from pcdc_jax.data.images import atomic_write_bytes


def read_log(run: str | Path) -> list[dict]:
    """metrics.jsonl rows in step order, one per step (the last one logged)."""
    rows = {}
    for line in open(Path(run) / "metrics.jsonl"):
        r = json.loads(line)
        rows[r["step"]] = r
    return [rows[s] for s in sorted(rows)]


def plot(rows: list[dict], panels, path: str | Path, window: int, title: str) -> None:
    """One panel per group of keys (a list of lists); written to a temporary name, then renamed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, keys in zip(axes[:, 0], panels):
        for i, k in enumerate(keys):
            pts = np.array([(r["step"], r[k]) for r in rows if k in r], float).reshape(-1, 2)
            every = np.median(np.diff(pts[:, 0])) if len(pts) > 1 else 1.0
            n = min(len(pts), max(1, int(window // every)))
            # the raw values carry the legend entry when the window is too short to average
            ax.plot(pts[:, 0], pts[:, 1], lw=0.5, alpha=0.35, color=f"C{i}",
                    label=None if n > 1 else k)
            if n > 1:
                ax.plot(pts[n - 1:, 0], np.convolve(pts[:, 1], np.ones(n) / n, "valid"), lw=1.5,
                        color=f"C{i}", label=k)
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.set_ylabel(" / ".join(keys))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def mean_of(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if key in r]
    return f"{np.mean(values):.4g}" if values else "-"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 20, 40, 60, 90])
    ap.add_argument("--keys", nargs="+", default=["bpp", "psnr"],
                    help="metrics.jsonl fields to show; a,b draws a and b in one panel")
    ap.add_argument("--window", type=int, default=100, help="steps averaged before each mark")
    ap.add_argument("--plot", metavar="PNG", help="also write the training curves of --keys here")
    args = ap.parse_args(argv)
    rows = read_log(args.run)
    panels = [k.split(",") for k in args.keys]
    args.keys = [k for keys in panels for k in keys]
    missing = [k for k in args.keys if not any(k in r for r in rows)]
    if missing:
        raise SystemExit(f"train_summary: error: {args.run} logs no {', '.join(missing)}")
    # training time: each logged interval at its own speed, so pauses between resumed sessions
    # do not count
    steps = np.array([0] + [r["step"] for r in rows], float)
    elapsed = np.cumsum(np.diff(steps) / np.array([r["steps_per_s"] for r in rows]))
    print("| minutes | step | " + " | ".join(args.keys) + " | steps/s |")
    print("|---|---|" + "---|" * len(args.keys) + "---|")
    for minutes in [m for m in args.minutes if 60 * m < elapsed[-1]] + [None]:
        upto = [r for r, t in zip(rows, elapsed) if minutes is None or t <= 60 * minutes]
        if not upto:
            continue
        last = upto[-1]["step"]
        win = [r for r in upto if r["step"] > last - args.window]
        label = f"{minutes:g}" if minutes is not None else f"{elapsed[-1] / 60:.0f} (end)"
        print(f"| {label} | {last} | " + " | ".join(mean_of(win, k) for k in args.keys)
              + f" | {np.mean([r['steps_per_s'] for r in win]):.2f} |")
    if args.plot:
        plot(rows, panels, args.plot, args.window, Path(args.run).name)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
