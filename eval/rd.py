"""Rate-distortion study: our codec (every allocation policy, chosen step counts) against JPEG,
JPEG 2000, WebP, AVIF, JPEG XL and HEVC intra, all at the same byte budgets.

  python eval/rd.py --data DIR --out DIR [--model DIR] [--images NAME ...] [--limit N]
      [--ratios 8 12 16 24 32 48] [--methods pcdc:ppo pcdc:uniform ... jpeg hevc] [--steps 0 16]
      [--metrics psnr ms_ssim lpips_alex dists] [--anchor hevc]
      [--table psnr=30 lpips_alex=0.2 dists=0.15] [--crop-ratios 24]

Each image gets floor(3 H W / R) bytes at each compression ratio R; each method writes its best
file within that (classical codecs search their quality setting), and bpp is the real file size.
`pcdc:POLICY` methods are decoded at every --steps (default: the model's), each a method
`pcdc:POLICY@STEPS`. Curves average over the images every method could code at that ratio.
Writes to --out: per_image.csv, methods/<method>.json, summary.json, rd_<metric>.png,
tables.md (curves, BD-rates against --anchor, Table I: the compression ratio each method needs
for each --table quality), rows.jsonl (every row as measured: rerunning the same command resumes
an interrupted run; delete the folder to measure afresh) and crops/ (the most detailed 256x256 window of each image: original
and every method at --crop-ratios), which eval/report.py turns into a page.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcdc_jax import api, metrics  # noqa: E402
from pcdc_jax.data.datasets import list_images  # noqa: E402
from pcdc_jax.data.images import atomic_write_bytes, read_image  # noqa: E402
from pcdc_jax.evaluation import codecs, figures, rd  # noqa: E402
from pcdc_jax.evaluation.journal import read as read_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICIES = [f"pcdc:{p}" for p in api.POLICIES]
BPG_NOTE = ("HEVC intra is x265 through ffmpeg, the codec inside BPG; BPG itself is not packaged "
            "here, and its file would add a header of a few bytes to the same bitstream.")


def _threshold(s: str):
    k, _, v = s.partition("=")
    k = metrics.ALIASES.get(k, k)
    if k not in metrics.HIGHER_IS_BETTER or not v:
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE with a metric of {metrics.ALL}, got {s!r}")
    return k, float(v)


def _write(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="an image folder or one image")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--model")
    ap.add_argument("--images", nargs="+", metavar="NAME", help="only these files of --data, by name")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--ratios", nargs="+", type=float, default=[8, 12, 16, 24, 32, 48])
    ap.add_argument("--methods", nargs="+", default=POLICIES + list(codecs.CLASSICAL))
    ap.add_argument("--steps", nargs="+", type=int, help="DDIM steps for pcdc methods (default: the model's)")
    ap.add_argument("--metrics", nargs="+", default=list(rd.METRICS), choices=metrics.ALL)
    ap.add_argument("--anchor", default=codecs.ANCHOR)
    ap.add_argument("--bd-method", choices=("cubic", "pchip"), default="cubic")
    ap.add_argument("--table", nargs="+", type=_threshold,
                    default=[("psnr", 30.0), ("lpips_alex", 0.2), ("dists", 0.15)],
                    help="quality thresholds for Table I, as METRIC=VALUE")
    ap.add_argument("--crop-ratios", nargs="*", type=float, help="ratios whose crops are saved (default: the middle one)")
    args = ap.parse_args(argv)
    if any(r <= 0 for r in args.ratios):
        ap.error("ratios must be positive")
    try:
        files = list_images(args.data)
    except FileNotFoundError as e:
        ap.error(str(e))
    if args.images:
        missing = set(args.images) - {f.name for f in files}
        if missing:
            ap.error(f"not in {args.data}: {', '.join(sorted(missing))}")
        files = [f for f in files if f.name in args.images]
    files = files[: args.limit]
    if not files:
        ap.error("--limit leaves no image")
    out = Path(args.out)
    specs = []
    for m in args.methods:
        if m.startswith("pcdc") and "@" not in m and args.steps:
            specs += [f"{m}@{s}" for s in args.steps]
        else:
            specs.append(m)
    rt = api.load(args.model) if any(s.startswith("pcdc") for s in specs) else None
    notes = []
    try:
        chosen = codecs.available(specs, rt, log=lambda s: (notes.append(s), print(s, file=sys.stderr)))
    except ValueError as e:
        ap.error(str(e))
    names = [c.name for c in chosen]
    if args.anchor not in names:
        notes.append(f"anchor {args.anchor} is not among the methods run: no BD-rates")
    if "hevc" in names:
        notes.append(BPG_NOTE)
    if rt is not None:
        d, c = rt.cfg.diffusion, rt.cfg.container
        notes.append(f"pcdc codes any image size whole: latent streams in independent tiles of "
                     f"{16 * c.tile_latent} px, the diffusion decoder in {d.window} px windows overlapping "
                     f"by {d.overlap} px; LPIPS and DISTS of images over 1 MP through exact 512 px tiles; "
                     "classical codecs code each image whole.")
    images = [(f.name, read_image(f, notices=[])) for f in files]
    ratios = sorted(args.ratios)
    crop_ratios = args.crop_ratios if args.crop_ratios is not None else [ratios[len(ratios) // 2]]
    ours = next((c.name for c in chosen if c.name.startswith("pcdc")), None)
    anchor = next((c for c in chosen if c.name == args.anchor), None)
    run = {"data": str(Path(args.data).resolve()), "model_fingerprint": rt.model.fingerprint.hex() if rt else None}
    if (out / "run.json").exists() and json.loads((out / "run.json").read_text()) != run:
        ap.error(f"{out} holds a run on other data or another model ({out / 'run.json'}); give a new --out")
    _write(out / "run.json", json.dumps(run))
    journal = out / "rows.jsonl"            # every measured row as it comes: a rerun resumes from it
    done = [r for r in read_records(journal) if set(args.metrics) <= set(r) or r.get("bytes") is None]
    if done:
        print(f"resuming: {len(done)} rows from {journal}", file=sys.stderr)
    with open(journal, "a") as jf:
        rows = rd.measure(images, chosen, ratios, args.metrics, crops_dir=out / "crops", crop_ratios=crop_ratios,
                          match=(ours, anchor) if ours and anchor else None, done=done,
                          on_row=lambda r: (jf.write(json.dumps(r) + "\n"), jf.flush()),
                          log=lambda s: print(s, flush=True))
    summary = rd.summarize(rows, names, args.metrics, anchor=args.anchor if args.anchor in names else None,
                           thresholds=dict(args.table), bd_method=args.bd_method)
    labels = {c.name: c.label for c in chosen}
    meta = {"data": str(args.data), "images": [n for n, _ in images], "ratios": ratios, "metrics": args.metrics,
            "methods": names, "labels": labels, "crop_ratios": crop_ratios, "notes": notes,
            "crop_match": f"{anchor.name}={ours}" if ours and anchor else None,
            "model_fingerprint": rt.model.fingerprint.hex() if rt is not None else None}
    title = f"{Path(args.data).name}: {len(images)} images"
    meta["plots"] = []
    for k in args.metrics:                    # a metric undefined on every image (MS-SSIM of tiny ones) gets none
        if any(len(rd.points(c, k)[0]) for c in summary["curves"].values()):
            figures.rd_curves(summary, k, out / f"rd_{k}.png", labels, title)
            meta["plots"].append(f"rd_{k}.png")
    rd.write_csv(rows, out / "per_image.csv")
    for name in names:
        _write(out / "methods" / (name.replace(":", "-").replace("@", "-") + ".json"),
               json.dumps({"method": name, "label": labels[name], "curve": summary["curves"][name],
                           "rows": [r for r in rows if r["method"] == name]}, indent=1))
    _write(out / "summary.json", json.dumps({**meta, **summary}, indent=1))
    tables = "\n\n".join(t for t in (
        f"# Rate-distortion on {args.data} ({len(images)} images)", rd.markdown_curves(summary, args.metrics),
        rd.markdown_bd(summary, args.metrics) if summary["bd_rate"] else "",
        "Table I: the compression ratio each method needs for each quality (higher is better):\n\n"
        + rd.markdown_table1(summary), "Notes:\n\n" + "\n".join(f"- {n}" for n in notes)) if t)
    _write(out / "tables.md", tables + "\n")
    print("\n" + tables)


if __name__ == "__main__":
    main()
