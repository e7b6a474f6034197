"""A classical transform coder on the codec's blocks, against JPEG at the same size.

  python eval/klt_bound.py [--train ../shared/data/train] [--data ../shared/data/kodak]
                           [--steps 160 80 40 20 10] [--channels 768 128] [--out outputs/klt_bound.json]

The transform is the KLT of 16x16 RGB blocks (`pcdc_jax.codec.klt`, estimated on 1024 training
crops of 128x128 as `train/train_codec.py` does), keeping the first C coefficients of each block;
every coefficient is quantized with the same step (pixel units of 0..255) and the rate is each
channel's empirical entropy of its symbols in the image (a static per-channel model, no side
information counted). This is where a KLT start puts a codec before training, and with
--channels 128 it shows the ceiling a 128-channel latent leaves. JPEG is Pillow's at the highest
quality no larger than the transform coder's rate, as in eval/rd_jpeg.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from pcdc_jax.codec import klt  # noqa: E402
from pcdc_jax.data.datasets import FolderDataset, list_images  # noqa: E402
from pcdc_jax.data.images import atomic_write_bytes, read_image  # noqa: E402
from rd_jpeg import jpeg_at_most, psnr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def entropy_bits(symbols: np.ndarray) -> float:
    """Sum over columns of each column's empirical entropy times its length."""
    bits = 0.0
    for col in symbols.T:
        _, counts = np.unique(col, return_counts=True)
        bits -= float((counts * np.log2(counts / counts.sum())).sum())
    return bits


def transform_code(image: np.ndarray, mean, basis, step: float, channels: int) -> tuple[float, np.ndarray]:
    """(bits, reconstruction uint8) of an image whose sides are multiples of 16."""
    v, m = basis[:, :channels], 255.0 * mean          # orthonormal: pixel units stay pixel units
    sym = np.round((klt.to_blocks(image) - m) @ v / step)
    rec = klt.from_blocks((sym * step) @ v.T + m, *image.shape[:2])
    return entropy_bits(sym), np.clip(np.round(rec), 0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--steps", type=float, nargs="+", default=[160, 80, 40, 20, 10])
    ap.add_argument("--channels", type=int, nargs="+", default=[768, 128])
    ap.add_argument("--crops", type=int, default=1024)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "klt_bound.json"))
    args = ap.parse_args(argv)

    mean, basis, _ = klt.block_klt(klt.sample_crops(FolderDataset([args.train], 128), args.crops, 8))
    files = list_images(args.data)[:args.limit]
    rows = []
    for f in files:
        image = read_image(f, notices=[])
        h, w = (s - s % 16 for s in image.shape[:2])
        image = image[:h, :w]
        for c in args.channels:
            for q in args.steps:
                bits, rec = transform_code(image, mean, basis, q, c)
                jpeg = jpeg_at_most(image, int(bits // 8))
                rows.append({"image": f.name, "channels": c, "step": q, "bpp": bits / (h * w),
                             "psnr": psnr(image, rec), "jpeg_bpp": jpeg and 8 * jpeg[0] / (h * w),
                             "jpeg_psnr": jpeg and jpeg[1]})
        print(f.name, flush=True)
    lines = ["| channels | step | KLT bpp | KLT PSNR dB | JPEG bpp (<= KLT) | JPEG PSNR dB | images |",
             "|---|---|---|---|---|---|---|"]
    for c in args.channels:
        for q in args.steps:
            sel = [r for r in rows if r["channels"] == c and r["step"] == q and r["jpeg_psnr"] is not None]
            if sel:
                m = {k: float(np.mean([r[k] for r in sel])) for k in ("bpp", "psnr", "jpeg_bpp", "jpeg_psnr")}
                lines.append(f"| {c} | {q:g} | {m['bpp']:.3f} | {m['psnr']:.2f} | {m['jpeg_bpp']:.3f} | "
                             f"{m['jpeg_psnr']:.2f} | {len(sel)} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps({"rows": rows, "table": table}, indent=1).encode())


if __name__ == "__main__":
    main()
