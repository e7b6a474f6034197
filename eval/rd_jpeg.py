"""Our codec at every uniform level against JPEG (Pillow/libjpeg) at the same file size.

  python eval/rd_jpeg.py [--model DIR] [--data ../shared/data/kodak] [--out outputs/rd_jpeg.json]
                         [--no-optimize]

For each image and level, the JPEG quality is the highest whose file is no larger than ours
(4:2:0 and 4:4:4 both tried, the better PSNR kept), with optimized Huffman tables as in
eval/rd.py (--no-optimize: libjpeg's default tables, as in BENCHMARKS.md's figures before
2026-11-23's session 12). bpp always from real file sizes.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pcdc_jax import api  # noqa: E402
from pcdc_jax.data.datasets import list_images  # noqa: E402
from pcdc_jax.data.images import read_image  # noqa: E402
from pcdc_jax.evaluation.codecs import best_within  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def jpeg_at_most(image: np.ndarray, max_bytes: int, optimize: bool = True) -> tuple[int, float] | None:
    """Best PSNR JPEG no larger than max_bytes: (bytes, psnr), or None if even q=1 is larger."""
    def save(subsampling, quality):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=subsampling, optimize=optimize)
        return buf.getvalue()

    best = None
    for subsampling in (2, 0):
        data = best_within(functools.partial(save, subsampling), range(1, 101), max_bytes)
        if data is not None:
            dec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            cand = (len(data), psnr(image, dec))
            if best is None or cand[1] > best[1]:
                best = cand
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "rd_jpeg.json"))
    ap.add_argument("--no-optimize", action="store_true", help="JPEG with libjpeg's default Huffman tables")
    args = ap.parse_args(argv)
    rt = api.load(args.model)
    files = list_images(args.data)[: args.limit]
    per_image = []
    for f in files:
        img = read_image(f, notices=[])
        an = rt.analyze(img)
        px = img.shape[0] * img.shape[1]
        for level in range(rt.num_levels):
            r = rt.encode(an, rt.uniform_levels(an, level))
            rec = api.reconstruct(an, r.levels, rt)
            jp = jpeg_at_most(img, len(r.data), optimize=not args.no_optimize)
            per_image.append({"image": f.name, "level": level, "bpp": 8 * len(r.data) / px,
                              "psnr": psnr(img, rec),
                              "jpeg_bpp": 8 * jp[0] / px if jp else None,
                              "jpeg_psnr": jp[1] if jp else None})
        print(f.name, " ".join(f"L{r['level']}:{r['bpp']:.3f}bpp/{r['psnr']:.2f}dB"
                               f"(jpeg {r['jpeg_psnr'] or float('nan'):.2f})"
                               for r in per_image[-rt.num_levels:]), flush=True)
    summary = []
    for level in range(rt.num_levels):
        rows = [r for r in per_image if r["level"] == level]
        both = [r for r in rows if r["jpeg_psnr"] is not None]
        summary.append({
            "level": level, "bpp": float(np.mean([r["bpp"] for r in rows])),
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "jpeg_bpp": float(np.mean([r["jpeg_bpp"] for r in both])) if both else None,
            "jpeg_psnr": float(np.mean([r["jpeg_psnr"] for r in both])) if both else None,
            "ours_psnr_same_images": float(np.mean([r["psnr"] for r in both])) if both else None,
            "jpeg_possible": f"{len(both)}/{len(rows)}"})
    out = {"data": args.data, "jpeg_optimize": not args.no_optimize, "model_fingerprint": rt.model.fingerprint.hex(),
           "per_image": per_image, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\n{len(files)} images from {args.data}")
    print("| level | ours bpp | ours PSNR dB | JPEG bpp (<= ours) | JPEG PSNR dB | JPEG reachable |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        jb = f"{s['jpeg_bpp']:.3f}" if s["jpeg_bpp"] is not None else "-"
        jp = f"{s['jpeg_psnr']:.2f}" if s["jpeg_psnr"] is not None else "-"
        print(f"| {s['level']} | {s['bpp']:.3f} | {s['psnr']:.2f} | {jb} | {jp} | {s['jpeg_possible']} |")


if __name__ == "__main__":
    main()
