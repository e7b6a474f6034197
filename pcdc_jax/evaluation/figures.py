"""Figures of the evaluation (matplotlib, Agg; PNGs written to a temporary name, then renamed)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pcdc_jax import metrics
from pcdc_jax.data.images import atomic_write_bytes
from pcdc_jax.evaluation import rd


def _figure(*args, **kw):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(*args, **kw)


def _save(plt, fig, path: Path):
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def rd_curves(summary: dict, key: str, path: Path, labels: dict | None = None, title: str = ""):
    """bpp against one metric for every method of an `rd.summarize` result."""
    plt, fig, ax = _figure(figsize=(6.4, 4.6), dpi=110)
    for m, curve in summary["curves"].items():
        bpp, q = rd.points(curve, key)
        if not len(bpp):
            continue
        order = np.argsort(bpp)
        ours = m.startswith("pcdc")
        ax.plot(bpp[order], q[order], "o-" if ours else "s--", lw=2 if ours else 1.2, ms=4,
                label=(labels or {}).get(m, m))
    ax.set_xlabel("bits per pixel (real file size)")
    ax.set_ylabel(rd.LABELS.get(key, key) + ("" if metrics.HIGHER_IS_BETTER.get(key, True) else ", lower is better"))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def steps_ablation(rows: list[dict], keys: list[str], path: Path, title: str = ""):
    """Quality against DDIM steps (one panel per metric) and decode time per megapixel."""
    plt, fig, axes = _figure(1, len(keys) + 1, figsize=(3.2 * (len(keys) + 1), 3.4), dpi=110, squeeze=False)
    steps = np.array([r["steps"] for r in rows])
    x = np.maximum(steps, 0.5)                        # steps 0 (x_base) shown at 0.5 on the log axis
    for ax, k in zip(axes[0], [*keys, "s_per_mp"]):
        ax.plot(x, [r[k] for r in rows], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(s) for s in steps], fontsize=7)
        ax.set_xlabel("DDIM steps (0 = x_base)")
        ax.set_ylabel("decode s per MP" if k == "s_per_mp" else rd.LABELS.get(k, k)
                      + ("" if metrics.HIGHER_IS_BETTER.get(k, True) else ", lower is better"), fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    _save(plt, fig, path)
