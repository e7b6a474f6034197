"""One static HTML page of an evaluation: tables, plots and side-by-side crops.

  python eval/report.py --out outputs/report.html [--rd outputs/rd_kodak outputs/rd_aerial]
      [--ablation outputs/ablate_steps.json] [--detection outputs/detection.json]
      [--crop-methods pcdc:ppo@16 hevc] [--check]

--rd takes output folders of eval/rd.py, --ablation JSON files of eval/ablate_steps.py (their
.png beside them), --detection JSON files of eval/detection.py. The page's images are copied into
a folder beside it (<name>_files/), so the two can be moved together. --check loads the page in
headless Chromium and fails unless every image decoded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcdc_jax.evaluation import report  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rd", nargs="*", default=[])
    ap.add_argument("--ablation", nargs="*", default=[])
    ap.add_argument("--detection", nargs="*", default=[])
    ap.add_argument("--crop-methods", nargs="+")
    ap.add_argument("--title", default="pcdc-jax evaluation")
    ap.add_argument("--check", action="store_true", help="load the page in headless Chromium")
    args = ap.parse_args(argv)
    for d in args.rd:
        if not (Path(d) / "summary.json").exists():
            ap.error(f"{d} is not an eval/rd.py output folder (no summary.json)")
    for f in args.ablation + args.detection:
        if not Path(f).is_file():
            ap.error(f"no such file: {f}")
    page = report.build(args.out, args.rd, args.ablation, args.detection, args.crop_methods, args.title)
    print(f"wrote {page}")
    if args.check:
        result = report.browser_check(page)
        print(result)
        n, total = result.split()[2].split("/")
        if n != total or total == "0":
            raise SystemExit(f"report: error: not every image loaded ({result.splitlines()[0]})")


if __name__ == "__main__":
    main()
