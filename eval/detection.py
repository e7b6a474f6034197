"""Object detection on originals and reconstructions (PCDC Table II).

  python eval/detection.py [--detector ../shared/data/models/yolov8n_coco_int8.onnx]
      [--data ../shared/data/kodak] [--labels DIR] [--methods pcdc:ppo jpeg hevc ...]
      [--ratio 20] [--steps N] [--model DIR] [--tile] [--limit N] [--conf 0.25]
      [--out outputs/detection_r20.json]

A YOLO-style ONNX detector (pcdc_jax.evaluation.detection) runs on every original image, then on
its reconstruction by every method (pcdc_jax.evaluation.codecs) at the same ratio: the file is at
most 24 H W / 8 / ratio bytes. Per method: the mean count ratio (detections on the
reconstruction / on the original, over images where the original has any), the mean confidence
on originals and reconstructions (over all detections), the mean IoU of matched detections
(same class, IoU >= 0.5) and the fraction of the original's detections recovered. With --labels
(YOLO or DOTA label files named like the images; the aerial_det and DOTA classes mapped onto
COCO), precision and recall at --conf and VOC mAP@0.5 on the originals and on each method's
reconstructions; the detector then runs at conf 0.001 so AP sees the whole ranking, and only
detections >= --conf enter everything else. --tile runs native-resolution tiles of the
detector's input size (for frames much larger than it). A method that is not installed is
skipped; an image a method cannot code at the ratio is skipped for that method and named.
Prints a markdown table; writes the per-image values as JSON. Resumable: each finished image goes
to a journal beside the output (OUT.rows.jsonl), and the same command run again measures only the
images it lacks; other settings with the same --out are refused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pcdc_jax import api  # noqa: E402
from pcdc_jax.data.datasets import list_images  # noqa: E402
from pcdc_jax.data.images import atomic_write_bytes, read_image  # noqa: E402
from pcdc_jax.evaluation import detection as det  # noqa: E402
from pcdc_jax.evaluation.journal import read as read_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METHODS = ("pcdc:ppo", "jpeg", "jpeg2000", "webp", "avif", "jpegxl", "hevc")
AP_CONF = 0.001


def fail(msg: str):
    raise SystemExit(f"detection: error: {msg}")


def load_codecs(specs, model, steps):
    """The Codecs of the methods that are available, {spec: why} of the others (printed), and
    the model runtime (None without pcdc methods)."""
    from pcdc_jax.evaluation import codecs

    runtime, out, unavailable = None, [], {}
    for spec in specs:
        try:
            if spec.startswith("pcdc") and runtime is None:
                runtime = api.load(model)
            out.append(codecs.get(spec, runtime=runtime if spec.startswith("pcdc") else None,
                                  steps=steps))
        except codecs.Unavailable as e:
            print(f"skipping {spec}: unavailable ({e})", file=sys.stderr)
            unavailable[spec] = str(e)
        except ValueError as e:
            fail(f"--methods {spec}: {e}")
    return out, unavailable, runtime


def _f(v, fmt=".3f"):
    return "-" if v is None else format(v, fmt)


def _measure(name: str, im: np.ndarray, detector, methods, conf: float, ratio: float):
    """(row, skipped, detections) of one image: the row of per-method comparisons, the methods
    that could not code it at `ratio`, and {"original" or method: every detection} (for AP)."""
    h, w = im.shape[:2]
    d_all = detector.detect(im)
    d0 = d_all.above(conf)
    row = {"image": name, "width": w, "height": h,
           "original": {"n": len(d0.scores),
                        "mean_conf": float(d0.scores.mean()) if len(d0.scores) else None,
                        "classes": {detector.names[c]: int(k) for c, k in
                                    zip(*np.unique(d0.classes, return_counts=True))}}}
    found, skipped = {"original": d_all}, []
    limit = api.budget_bytes(h, w, ratio=ratio)
    for codec in methods:
        t = time.perf_counter()
        data = codec.encode(im, limit)
        if data is None:
            print(f"skipping {name} for {codec.name}: cannot reach ratio {ratio:g}", file=sys.stderr)
            skipped.append({"image": name, "method": codec.name,
                            "reason": f"cannot reach ratio {ratio:g} ({limit} bytes)"})
            continue
        recon = codec.decode(data)
        seconds = time.perf_counter() - t
        found[codec.name] = detector.detect(recon)
        v = det.compare(d0, found[codec.name].above(conf))
        v.update(bytes=len(data), bpp=8 * len(data) / (h * w), seconds=seconds)
        row[codec.name] = v
    return row, skipped, found


def _read_journal(path: Path, run: dict) -> dict | None:
    """{image: (row, skipped, detections)} of an earlier run of the same settings ({} if there is
    none); None if the journal belongs to another run. A line cut short by a kill is ignored."""
    records = read_records(path)
    if not records:
        return {}
    if records[0].get("run") != run:
        return None
    done = {}
    for r in records[1:]:
        found = {k: det.Detections(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32),
                                   np.asarray(c, np.int64)) for k, (b, s, c) in r["dets"].items()}
        done[r["row"]["image"]] = (r["row"], r["skipped"], found)
    return done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default=str(SHARED / "models" / "yolov8n_coco_int8.onnx"))
    ap.add_argument("--data", default=str(SHARED / "kodak"))
    ap.add_argument("--labels", help="folder of YOLO or DOTA label files named like the images")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--ratio", type=float, default=20.0)
    ap.add_argument("--steps", type=int, help="DDIM steps of pcdc methods (default: the model's)")
    ap.add_argument("--model", help="pcdc model folder (default: the shipped model)")
    ap.add_argument("--tile", action="store_true", help="detect on native-resolution tiles")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if not args.ratio > 0:
        fail(f"--ratio must be positive, got {args.ratio:g}")
    try:
        detector = det.Detector(args.detector, conf=min(args.conf, AP_CONF) if args.labels else args.conf,
                                tile=det.DEFAULT_OVERLAP if args.tile else None)
        files = list_images(args.data)[: args.limit]
        if args.labels and not Path(args.labels).is_dir():
            raise FileNotFoundError(f"label folder {args.labels}: no such folder")
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    methods, unavailable, runtime = load_codecs(args.methods, args.model, args.steps)
    names = [c.name for c in methods]          # e.g. "jpeg", "pcdc:ppo@16"
    eval_classes = sorted(set(det.DEFAULT_CLASS_MAP.values()))

    out = Path(args.out or ROOT / "outputs" / f"detection_r{args.ratio:g}.json")
    run = {"detector": str(Path(args.detector).resolve()), "data": str(Path(args.data).resolve()),
           "labels": str(Path(args.labels).resolve()) if args.labels else None, "ratio": args.ratio,
           "steps": args.steps, "tile": args.tile, "conf": args.conf, "methods": names,
           "model_fingerprint": runtime.model.fingerprint.hex() if runtime is not None else None}
    journal = out.with_suffix(".rows.jsonl")    # one line per finished image: a rerun resumes from it
    done = _read_journal(journal, run)
    if done is None:
        fail(f"{journal} holds a run with other settings, data or model; give another --out")
    if done:
        print(f"resuming: {len(done)} images from {journal}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not done:                                # a new journal (or one with no finished image)
        journal.write_text(json.dumps({"run": run}) + "\n")

    per_image, skipped, empty = [], [], []
    dets = {"original": [], **{n: [] for n in names}}   # for AP: detections (and gts) per image
    gts = {"original": [], **{n: [] for n in names}}
    with open(journal, "a") as jf:
        for f in files:
            im = read_image(f, notices=[])
            labels = None
            if args.labels:                      # read on every run: the journal keeps no labels
                try:
                    labels = det.load_labels(args.labels, f, im.shape[1], im.shape[0])
                except ValueError as e:
                    fail(str(e))
                if labels is None:
                    print(f"note: {f.name}: no label file in {args.labels}", file=sys.stderr)
            if f.name in done:
                row, skip, found = done[f.name]
            else:
                row, skip, found = _measure(f.name, im, detector, methods, args.conf, args.ratio)
                jf.write(json.dumps({"row": row, "skipped": skip,
                                     "dets": {k: [v.boxes.tolist(), v.scores.tolist(), v.classes.tolist()]
                                              for k, v in found.items()}}) + "\n")
                jf.flush()
            per_image.append(row)
            skipped += skip
            if not row["original"]["n"]:
                empty.append(f.name)
                print(f"note: {f.name}: the detector found nothing on the original", file=sys.stderr)
            if labels is not None:
                gt, dropped = det.map_classes(labels)
                row["labels"] = {"n": len(labels.classes), "mapped": len(gt.classes), "dropped": dropped}
                for k in found:
                    dets[k].append(found[k])
                    gts[k].append(gt)
            print(f"{f.name}: {row['original']['n']} detections on the original"
                  + "".join(f", {n} {row[n]['n_recon']} ({row[n]['matched']} matched, {row[n]['bpp']:.3f} bpp)"
                            for n in names if n in row), flush=True)

    summary = {n: det.pool([r[n] for r in per_image if n in r]) for n in names}
    accuracy = None
    if args.labels:
        accuracy = {}
        for n in ("original", *names):
            a = det.average_precision(dets[n], gts[n], conf=args.conf, classes=eval_classes)
            accuracy[n] = {"images": len(gts[n]), "precision": a["precision"], "recall": a["recall"],
                           "map50": a["map"], "ap50": {detector.names[c]: v for c, v in a["ap"].items()},
                           "npos": {detector.names[c]: v for c, v in a["npos"].items()}}
    notes = [f"{len(per_image)} images of {args.data}, detector {Path(args.detector).name} "
             f"({detector.format}, {'tiled' if args.tile else 'whole frame'}, conf {args.conf:g}), "
             f"ratio {args.ratio:g}" + (f"; skipped {len(skipped)} image/method pairs" if skipped else "")]
    if empty and len(empty) == len(per_image):
        notes.append("the detector found nothing on any original, so there is nothing to compare: "
                     "nadir aerial frames are out of the domain of COCO-trained detectors "
                     "(shared/data/README.md section 5); try --tile, or an aerial-trained detector")
    elif empty:
        notes.append(f"nothing detected on {len(empty)} of {len(per_image)} originals: {', '.join(empty)}")
    table = ["| method | images | bpp | detections orig -> recon | count ratio | conf orig | conf recon "
             "| matched IoU | recovered |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        s = summary[n]
        table.append(f"| {n} | {s['images']} | {_f(s['bpp'])} | {s['n_orig']} -> {s['n_recon']} | "
                     f"{_f(s['count_ratio'])} | {_f(s['mean_conf_orig'])} | {_f(s['mean_conf_recon'])} | "
                     f"{_f(s['mean_iou'])} | {_f(s['recovered'])} |")
    if accuracy:
        table += ["", f"Against the labels ({', '.join(detector.names[c] for c in eval_classes)}), "
                  f"IoU 0.5; precision and recall at conf {args.conf:g}:", "",
                  "| method | labelled images | precision | recall | mAP@0.5 |", "|---|---|---|---|---|"]
        table += [f"| {n} | {a['images']} | {_f(a['precision'])} | {_f(a['recall'])} | {_f(a['map50'])} |"
                  for n, a in accuracy.items()]
    table = "\n".join(table)
    atomic_write_bytes(out, json.dumps({
        "detector": str(args.detector), "format": detector.format, "input_size": list(detector.input_size),
        "tile": detector.tile, "conf": args.conf, "data": str(args.data), "labels": args.labels,
        "ratio": args.ratio, "steps": args.steps, "methods": names, "unavailable": unavailable,
        "summary": summary, "accuracy": accuracy, "no_detections": empty, "skipped": skipped,
        "table": table, "notes": notes, "images": per_image}, indent=2).encode())
    print("\n" + "\n".join(f"note: {n}" for n in notes) + "\n" + table)

if __name__ == "__main__":
    main()
