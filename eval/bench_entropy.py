"""Entropy-coding throughput and exactness: symbols/s encode and decode, file bits vs estimate.

  python eval/bench_entropy.py [--model DIR] [--images DIR_OR_FILES ...] [--out outputs/bench_entropy.json]

Times only the host-side coding of the latent (y) and hyper-latent (z) streams, per level, on real
images (Kodak from ../shared/data when present, else the shipped samples).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from pcdc_jax import api  # noqa: E402
from pcdc_jax.codec import bitstream  # noqa: E402
from pcdc_jax.data.datasets import list_images  # noqa: E402
from pcdc_jax.data.images import read_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--images", nargs="+")
    ap.add_argument("--limit", type=int, default=8, help="images to use")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench_entropy.json"))
    args = ap.parse_args(argv)
    kodak = ROOT.parent / "shared" / "data" / "kodak"
    sources = args.images or [str(kodak if kodak.is_dir() else ROOT / "samples")]
    files = [f for s in sources for f in list_images(s)][: args.limit]
    rt = api.load(args.model)
    rows = []
    for level in range(rt.num_levels):
        n_sym = enc_t = dec_t = est = act = 0.0
        for f in files:
            an = rt.analyze(read_image(f, notices=[]))
            levels = rt.uniform_levels(an, level)
            sym = rt.selected_symbols(an, levels)
            idx = rt.scale_index(an.t, levels)
            tiles = bitstream.tile_grid(*levels.shape, rt.cfg.container.tile_latent)
            t0 = time.perf_counter()
            streams = [rt.coder.encode_y(sym[sl], idx[sl]) for sl in tiles]
            z = rt.coder.encode_z(an.z_symbols)
            t1 = time.perf_counter()
            for sl, s in zip(tiles, streams):
                rt.coder.decode_y(s, idx[sl])
            rt.coder.decode_z(z, an.z_symbols.shape)
            t2 = time.perf_counter()
            n_sym += sym.size + an.z_symbols.size
            enc_t += t1 - t0
            dec_t += t2 - t1
            est += rt.estimate_bits(an, levels)
            act += 8 * (len(z) + sum(len(s) for s in streams))
        rows.append({"level": level, "symbols": int(n_sym), "encode_Msym_per_s": n_sym / enc_t / 1e6,
                     "decode_Msym_per_s": n_sym / dec_t / 1e6, "estimated_bits": est,
                     "actual_bits": act, "actual_over_estimate": act / est})
    result = {"model": str(rt.model.cfg.name), "fingerprint": rt.model.fingerprint.hex(),
              "images": [str(f) for f in files], "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{len(files)} images, model {rt.model.cfg.name}")
    print("| level | symbols | encode Msym/s | decode Msym/s | actual / estimated bits |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['level']} | {r['symbols']} | {r['encode_Msym_per_s']:.2f} | "
              f"{r['decode_Msym_per_s']:.2f} | {r['actual_over_estimate']:.4f} |")


if __name__ == "__main__":
    main()
