"""Rate-distortion studies: every codec at the same byte budgets, scored, summarized into curves,
Bjontegaard deltas against an anchor, and the compression ratio each method needs for a quality
(the paper's Table I).

    rows = rd.measure(images, codecs, ratios=(8, 16, 32))      # one row per image x method x ratio
    s = rd.summarize(rows, [c.name for c in codecs], anchor="hevc")

A target compression ratio R (against raw 24-bit RGB) gives each image the budget
floor(3 H W / R) bytes; each codec writes the best file it can within it, so bpp (always from the
real file) is at most 24 / R. Curves average over the images that every method could code at that
ratio, so all methods are compared on the same images.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from pcdc_jax import api, metrics
from pcdc_jax.data.images import atomic_write_bytes, write_image
from pcdc_jax.evaluation import bd

METRICS = ("psnr", "ms_ssim", "lpips_alex", "dists")
LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM", "lpips_alex": "LPIPS (AlexNet)",
          "lpips_vgg": "LPIPS (VGG)", "dists": "DISTS"}
RAW_BPP = 24.0
METRIC_BATCH_PIXELS = 1 << 21       # reconstructions scored per call against one reference (5 Kodak images)


def detail_crop(image: np.ndarray, size: int = 256) -> tuple[int, int, int]:
    """(top, left, side): the square window of the image with the most high-frequency energy (on
    a grid of size/4 strides), for side-by-side crops that show what a codec loses."""
    h, w = image.shape[:2]
    side = min(size, h, w)
    g = image.astype(np.float32).mean(-1)
    e = np.zeros_like(g)
    e[1:-1, 1:-1] = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
    c = np.pad(e.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(1, side // 4)
    best = (-1.0, 0, 0)
    for t in list(range(0, h - side + 1, step)) + [h - side]:
        for left in list(range(0, w - side + 1, step)) + [w - side]:
            s = c[t + side, left + side] - c[t, left + side] - c[t + side, left] + c[t, left]
            best = max(best, (float(s), t, left))
    return best[1], best[2], side


def crop_name(image: str, method: str, ratio: float | None = None) -> str:
    """The file name of a side-by-side crop (the original when method is "original")."""
    safe = method.replace(":", "-").replace("@", "-")
    return f"{Path(image).stem}__{safe}" + ("" if ratio is None else f"__r{ratio:g}") + ".png"


def measure(images: Sequence[tuple[str, np.ndarray]], codecs: Sequence, ratios: Sequence[float],
            which: Sequence[str] = METRICS, *, crops_dir: Path | None = None,
            crop_ratios: Sequence[float] = (), match: tuple | None = None, done: Sequence[dict] = (),
            on_row: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """One row per (image, codec, ratio): bytes, bpp, achieved ratio, the metrics, encode and decode
    seconds; a codec that cannot fit the budget gets bytes None and a note. Codecs sharing an
    `encode_key` (the same pcdc policy decoded with different step counts) encode once. With
    crops_dir, the detail crop of the original and of every reconstruction at `crop_ratios` is
    saved there as PNG (`crop_name`). With match = (method, codec), at `crop_ratios` the codec
    also codes the image within the size of `method`'s file, for crops at equal bpp: a row with
    method "CODEC=METHOD" and crop_only True, which `summarize` leaves out. Rows in `done` (from an
    earlier, interrupted run) are kept, not measured again; `on_row` sees each new row as it comes."""
    rows, finished = [], {(r["image"], r["method"], r["target_ratio"]): r for r in done}
    if crops_dir:
        crops_dir.mkdir(parents=True, exist_ok=True)

    def add(row):
        rows.append(row)
        if on_row and (row["image"], row["method"], row["target_ratio"]) not in finished:
            on_row(row)

    for name, image in images:
        h, w = image.shape[:2]
        crop = detail_crop(image) if crops_dir else None
        if crop:
            t, left, side = crop
            write_image(crops_dir / crop_name(name, "original"), image[t:t + side, left:left + side])
        for ratio in ratios:
            max_bytes = api.budget_bytes(h, w, ratio=ratio)
            base = {"image": name, "target_ratio": ratio, "height": h, "width": w}
            at, pending, encoded = [], [], {}      # this ratio's rows; new (row, reconstruction) pairs

            def run(codec, budget, row):
                key = (getattr(codec, "encode_key", codec.name), budget)
                if key not in encoded:
                    encoded[key] = _encode(codec, image, budget)
                row, out = _decode(image, codec, budget, encoded[key], row)
                if out is not None:
                    pending.append((row, out))
                return row

            for codec in codecs:
                row = finished.get((name, codec.name, ratio)) or run(codec, max_bytes, {**base, "method": codec.name})
                at.append(row)
                if row["bytes"] is None:
                    log(f"{name}: {codec.name} cannot reach ratio {ratio:g} ({max_bytes} bytes)")
                elif ratio in crop_ratios and crop and match and codec.name == match[0]:
                    label = f"{match[1].name}={codec.name}"
                    at.append(finished.get((name, label, ratio)) or run(
                        match[1], row["bytes"], {**base, "method": label, "crop_only": True}))
            if pending:    # every new reconstruction of this image and ratio scored in one call
                values = metrics.evaluate(image, np.stack([o for _, o in pending]), which,
                                          max_batch_pixels=METRIC_BATCH_PIXELS)
                for j, (row, out) in enumerate(pending):
                    row.update({m: float(v[j]) for m, v in values.items()})
                    if ratio in crop_ratios and crop:
                        t, left, side = crop
                        write_image(crops_dir / crop_name(name, row["method"], ratio), out[t:t + side, left:left + side])
            for row in at:
                add(row)
            log(f"{name} r{ratio:g}: " + "  ".join(
                f"{r['method']} {r['bpp']:.3f}bpp/{r.get('psnr', float('nan')):.2f}dB" for r in at if r["bytes"]))
    return rows


def _encode(codec, image, max_bytes) -> tuple[bytes | None, float]:
    t0 = time.perf_counter()
    data = codec.encode(image, max_bytes) if max_bytes > 0 else None
    return data, time.perf_counter() - t0


def _decode(image, codec, max_bytes, encoded, row) -> tuple[dict, np.ndarray | None]:
    """The row of one coded file (size, times) and its reconstruction (None if it did not fit)."""
    data, row["encode_s"] = encoded
    row["max_bytes"] = max_bytes
    if data is None:
        return {**row, "bytes": None, "note": f"cannot fit {max_bytes} bytes"}, None
    if len(data) > max_bytes:
        raise AssertionError(f"{codec.name} wrote {len(data)} bytes over the budget {max_bytes}")
    t0 = time.perf_counter()
    out = codec.decode(data)
    row["decode_s"] = time.perf_counter() - t0
    if out.shape != image.shape:
        raise AssertionError(f"{codec.name} decoded {out.shape}, expected {image.shape}")
    h, w = image.shape[:2]
    row.update(bytes=len(data), bpp=8 * len(data) / (h * w), ratio=RAW_BPP * h * w / (8 * len(data)))
    return row, out


def summarize(rows: list[dict], methods: Sequence[str], which: Sequence[str] = METRICS, *,
              anchor: str | None = None, thresholds: dict | None = None, bd_method: str = "cubic") -> dict:
    """Mean curves over the images every method coded at each ratio; BD-rate (percent) and
    BD-quality of every method against `anchor` for each metric; and for each threshold
    {metric: value}, the compression ratio each method needs to reach it (Table I)."""
    ratios = sorted({r["target_ratio"] for r in rows})
    curves = {m: [] for m in methods}
    for ratio in ratios:
        at = [r for r in rows if r["target_ratio"] == ratio and r["method"] in methods]
        images = sorted({r["image"] for r in at})
        coded = {(r["image"], r["method"]) for r in at if r["bytes"]}
        ok = [i for i in images if all((i, m) in coded for m in methods)]
        if not ok:
            continue
        for m in methods:
            sel = [r for r in at if r["method"] == m and r["image"] in ok]
            point = {"target_ratio": ratio, "images": len(ok), "left_out": [i for i in images if i not in ok]}
            for k in ("bpp", "encode_s", "decode_s", *which):
                vals = [r[k] for r in sel if r.get(k) is not None and np.isfinite(r[k])]
                point[k] = float(np.mean(vals)) if vals else None
            point["ratio"] = RAW_BPP / point["bpp"]
            curves[m].append(point)
    out = {"curves": curves, "anchor": anchor, "bd_method": bd_method, "bd_rate": {}, "bd_quality": {},
           "table1": {}, "thresholds": dict(thresholds or {})}
    if anchor in curves:
        for m in methods:
            if m == anchor:
                continue
            out["bd_rate"][m], out["bd_quality"][m] = {}, {}
            for k in which:
                a, b = points(curves[anchor], k), points(curves[m], k)
                if len(a[0]) < 2 or len(b[0]) < 2:
                    out["bd_rate"][m][k] = out["bd_quality"][m][k] = None
                    continue
                out["bd_rate"][m][k] = bd.bd_rate(*a, *b, method=bd_method)
                out["bd_quality"][m][k] = bd.bd_quality(*a, *b, method=bd_method)
    for k, target in (thresholds or {}).items():
        out["table1"][k] = {}
        for m in methods:
            rate, qual = points(curves[m], k)
            hit = bd.rate_at_quality(rate, qual, target, metrics.HIGHER_IS_BETTER[k]) if len(rate) >= 1 else None
            lowest_ratio = RAW_BPP / max(rate) if len(rate) else None
            out["table1"][k][m] = ({"ratio": RAW_BPP / hit[0], "at_least": hit[1]} if hit
                                   else {"ratio": lowest_ratio, "below": True})
    return out


def points(curve: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(bpp, metric) arrays of a curve's points where the metric is defined."""
    pts = [(p["bpp"], p[key]) for p in curve if p.get(key) is not None and np.isfinite(p[key])]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def write_csv(rows: list[dict], path: Path):
    """The rows as CSV (every key any row has), written atomically."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    wr = csv.DictWriter(buf, keys)
    wr.writeheader()
    wr.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown_curves(summary: dict, which: Sequence[str]) -> str:
    lines = ["| method | target ratio | images | bpp | ratio | " + " | ".join(LABELS.get(k, k) for k in which)
             + " | encode s | decode s |", "|---|" + "---|" * (len(which) + 6)]
    for m, curve in summary["curves"].items():
        for p in curve:
            lines.append(f"| {m} | {p['target_ratio']:g} | {p['images']} | {p['bpp']:.3f} | {p['ratio']:.1f} | "
                         + " | ".join(_fmt(p[k], ".2f" if k == "psnr" else ".4f") for k in which)
                         + f" | {_fmt(p['encode_s'], '.2f')} | {_fmt(p['decode_s'], '.2f')} |")
    return "\n".join(lines)


def markdown_bd(summary: dict, which: Sequence[str]) -> str:
    a = summary["anchor"]
    lines = [f"BD-rate against {a} (percent; negative = fewer bits for the same quality; "
             f"{summary['bd_method']} fit; - where the two curves share no quality range), "
             "with BD-PSNR in dB at equal rate:", "",
             "| method | " + " | ".join(f"BD-rate {LABELS.get(k, k)}" for k in which) + " | BD-PSNR dB |",
             "|---|" + "---|" * (len(which) + 1)]
    for m, row in summary["bd_rate"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(row[k], "+.1f") for k in which)
                     + f" | {_fmt(summary['bd_quality'][m].get('psnr'), '+.2f')} |")
    return "\n".join(lines)


def markdown_table1(summary: dict) -> str:
    """Table I: the compression ratio each method needs to reach each quality threshold (higher is
    better); ">= R" where the highest ratio measured already reaches it, "< R" where even the lowest
    ratio measured does not."""
    th = summary["thresholds"]
    if not th:
        return ""
    heads = [f"{LABELS.get(k, k)} {'>=' if metrics.HIGHER_IS_BETTER[k] else '<='} {v:g}" for k, v in th.items()]
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(th)]
    methods = list(next(iter(summary["table1"].values())))
    for m in methods:
        cells = []
        for k in th:
            c = summary["table1"][k][m]
            if c["ratio"] is None:
                cells.append("-")
            elif c.get("below"):
                cells.append(f"< {c['ratio']:.1f}")
            else:
                cells.append(f"{'>= ' if c['at_least'] else ''}{c['ratio']:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
