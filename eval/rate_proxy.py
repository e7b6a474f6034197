"""How far training's rate proxy is from the rate the file pays, level by level.

  python eval/rate_proxy.py --model DIR [--data ../shared/data/kodak] [--limit N] [--crop 512]
      [--out outputs/rate_proxy.json]

Training prices the latent with noisy symbols, (y - mu) / step plus uniform noise, under a
noisy z (`Codec.__call__`); the file codes round((y - mu) / step) under the rounded z. For each
uniform level this prints both, in bits per pixel of the latent over all images (each cut to
its top-left corner, a multiple of 64 of at most --crop pixels a side): the proxy at one fixed
noise draw, and the exact coded bits from the rate table (`Runtime.analyze`). Where the ratio is
well above 1, training optimises a rate the file never pays.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pcdc_jax import api  # noqa: E402
from pcdc_jax.codec.model import Codec  # noqa: E402
from pcdc_jax.data.datasets import list_images  # noqa: E402
from pcdc_jax.data.images import read_image, to_float  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(rt: api.Runtime, images, seed: int = 0) -> list[dict]:
    """[{level, proxy_bpp, coded_bpp, ratio}] over `images` (uint8 [H, W, 3], sides multiples of 64)."""
    cc = rt.cfg.codec
    model = Codec(cc)
    proxy_fn = jax.jit(lambda x, levels, key: model.apply({"params": rt.params}, x, levels, key)["bits_y"].sum())
    proxy, coded, pixels = np.zeros(cc.num_levels), np.zeros(cc.num_levels), 0
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if h % 64 or w % 64:
            raise ValueError(f"image {i} is {h}x{w}: sides must be multiples of 64")
        an = rt.analyze(img)
        x = jnp.asarray(to_float(img))[None]
        for level in range(cc.num_levels):
            levels = jnp.full((1, h // 16, w // 16), level, jnp.int32)
            proxy[level] += float(proxy_fn(x, levels, jax.random.PRNGKey(seed + i)))
            coded[level] += float(an.rates[:, level].sum())
        pixels += h * w
    return [{"level": k, "proxy_bpp": proxy[k] / pixels, "coded_bpp": coded[k] / pixels,
             "ratio": proxy[k] / max(coded[k], 1e-9)} for k in range(cc.num_levels)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--crop", type=int, default=512, help="largest side kept (a multiple of 64)")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.crop < 64 or args.crop % 64:
        ap.error(f"--crop must be a positive multiple of 64, got {args.crop}")
    rt = api.load(args.model)
    images = []
    for f in list_images(args.data)[: args.limit]:
        img = read_image(f, notices=[])
        h, w = (min(args.crop, s // 64 * 64) for s in img.shape[:2])
        if h and w:
            images.append(np.ascontiguousarray(img[:h, :w]))
    if not images:
        ap.error(f"no image of at least 64x64 in {args.data}")
    rows = measure(rt, images)
    print(f"{len(images)} images from {args.data}, y only (z excluded)")
    print("| level | training proxy bpp | coded bpp | proxy / coded |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['level']} | {r['proxy_bpp']:.3f} | {r['coded_bpp']:.3f} | {r['ratio']:.2f} |")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps({"data": args.data, "model": args.model, "rows": rows}, indent=2))
        tmp.replace(out)


if __name__ == "__main__":
    main()
