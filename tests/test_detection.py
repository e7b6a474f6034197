"""Detection on reconstructions: box geometry, NMS, matching, VOC AP, label files, both raw
output layouts, the shipped detectors, and eval/detection.py end to end."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from pcdc_jax.evaluation import detection as det
from tests.conftest import SHARED, load_script, sample_image

MODELS = SHARED / "models"
YOLOV8 = MODELS / "yolov8n_coco_int8.onnx"
YOLOX = MODELS / "yolox_nano_coco.onnx"
AIRPLANE = 4


def dets(boxes, scores, classes):
    return det.Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                          np.asarray(classes, np.int64))


def test_iou_matrix():
    a = [[0, 0, 10, 10], [0, 0, 20, 20]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 5]]
    np.testing.assert_allclose(det.iou_matrix(a, b), [[1, 50 / 150, 0, 0], [100 / 400, 100 / 400, 0, 0]])
    assert det.iou_matrix(np.zeros((0, 4)), b).shape == (0, 4)


def test_nms_suppresses_overlaps_within_a_class():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 1, 10, 11]]  # IoU(0,1) = 90/110
    scores = [0.9, 0.8, 0.7, 0.6]
    np.testing.assert_array_equal(det.nms(boxes, scores, 0.45), [0, 2])
    np.testing.assert_array_equal(det.nms(boxes, scores, 0.45, classes=[0, 1, 0, 0]), [0, 1, 2])
    np.testing.assert_array_equal(det.nms(boxes, scores, 0.95), [0, 1, 2, 3])
    np.testing.assert_array_equal(det.nms(boxes, scores, 0.45, max_det=1), [0])
    assert det.nms(np.zeros((0, 4)), np.zeros(0)).size == 0


def test_compare_counts_matches_and_ious():
    orig = dets([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0.9, 0.8, 0.6], [2, 2, 0])
    recon = dets([[0, 0, 10, 8],      # car: IoU 80/100 with orig 0
                  [25, 0, 30, 10],    # car: IoU 50/100 with orig 1 (>= 0.5 counts)
                  [45, 0, 55, 10],    # person: IoU 50/150 with orig 2, too low
                  [40, 0, 50, 10],    # same box as orig 2 but a car: classes must agree
                  [0, 0, 10, 9]],     # car: IoU 0.9 with orig 0, but 0.9 > 0.8 takes orig 0 first
                 [0.7, 0.5, 0.4, 0.3, 0.2], [2, 2, 0, 2, 2])
    v = det.compare(orig, recon)
    assert v["n_orig"] == 3 and v["n_recon"] == 5
    assert v["count_ratio"] == pytest.approx(5 / 3)
    assert v["matched"] == 2
    assert v["mean_iou"] == pytest.approx((0.9 + 0.5) / 2)
    assert v["recovered"] == pytest.approx(2 / 3)
    assert v["mean_conf_orig"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert v["mean_conf_recon"] == pytest.approx((0.7 + 0.5 + 0.4 + 0.3 + 0.2) / 5)
    empty = det.Detections.empty()
    v = det.compare(empty, recon)
    assert v["count_ratio"] is None and v["recovered"] is None and v["mean_conf_orig"] is None
    assert det.compare(orig, empty)["count_ratio"] == 0 and det.compare(orig, empty)["mean_iou"] is None


def test_average_precision_hand_computed():
    # Class 2 ("car"): 3 counted ground truths (g0, g1 in image 0; g2 in image 1) and one difficult
    # one in image 1. Detections by score:
    #   0.95 truck in image 0  -> not a car: its own class (no ground truth)
    #   0.9  image 0 on g0     -> TP               precision 1/1, recall 1/3
    #   0.8  image 0 on g0 (IoU 0.9, g0 taken)     -> FP, precision 1/2, recall 1/3
    #   0.7  image 1 on g2     -> TP               precision 2/3, recall 2/3
    #   0.65 image 1 on the difficult box          -> ignored
    #   0.6  image 0 on g1     -> TP               precision 3/4, recall 3/3
    # Envelope (max precision at recall >= r): 1 at 1/3, 3/4 at 2/3 and at 1, so
    # AP = 1/3 * 1 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6.
    gts = [det.GroundTruth(np.float32([[0, 0, 10, 10], [20, 0, 30, 10]]), np.int64([2, 2]),
                           np.bool_([False, False])),
           det.GroundTruth(np.float32([[0, 0, 10, 10], [50, 50, 60, 60]]), np.int64([2, 2]),
                           np.bool_([False, True]))]
    d = [dets([[40, 40, 45, 45], [0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10]],
              [0.95, 0.9, 0.8, 0.6], [7, 2, 2, 2]),
         dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.7, 0.65], [2, 2])]
    a = det.average_precision(d, gts)                   # evaluated classes: those in the labels
    assert a["ap"] == {2: pytest.approx(5 / 6)} and a["map"] == pytest.approx(5 / 6)
    assert a["npos"] == {2: 3}
    assert (a["tp"], a["fp"]) == (3, 1)
    assert a["precision"] == pytest.approx(3 / 4) and a["recall"] == pytest.approx(1.0)
    # At conf 0.65 the 0.6 detection is gone: 2 TP, 1 FP (AP still sees every detection).
    a = det.average_precision(d, gts, conf=0.65)
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == pytest.approx(2 / 3)
    assert a["map"] == pytest.approx(5 / 6)
    # Once its class is evaluated the truck is a FP too, but has no AP (no ground truth).
    a = det.average_precision(d, gts, conf=0.65, classes=[2, 7, 5])
    assert a["precision"] == pytest.approx(2 / 4) and a["recall"] == pytest.approx(2 / 3)
    assert a["ap"] == {2: pytest.approx(5 / 6)} and a["map"] == pytest.approx(5 / 6)
    none = det.average_precision([det.Detections.empty()] * 2, gts)
    assert none["map"] == 0 and none["precision"] is None and none["recall"] == 0
    assert det.voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)


def test_label_files(tmp_path):
    (tmp_path / "classes.txt").write_text("car\ntruck\nbus\nminibus\ncyclist\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "frame.txt").write_text("0 0.5 0.5 0.2 0.4\n\n3 0.1 0.1 0.2 0.2\n")
    lab = det.read_yolo_labels(tmp_path / "labels" / "frame.txt", 100, 50)
    np.testing.assert_allclose(lab.boxes, [[40, 15, 60, 35], [0, 0, 20, 10]])
    assert lab.classes == [0, 3] and not lab.difficult.any()
    (tmp_path / "dota" / "labels").mkdir(parents=True)
    (tmp_path / "dota" / "labels" / "P1.txt").write_text(
        "imagesource:GoogleEarth\ngsd: 0.25\n10 20 30 15 35 40 12 45 ship 0\n"
        "1 2 7 2 7 8 1 8 small-vehicle 1\n5 5 6 5 6 6 5 6 harbor 0\n")
    lab = det.read_dota_labels(tmp_path / "dota" / "labels" / "P1.txt")
    np.testing.assert_allclose(lab.boxes, [[10, 15, 35, 45], [1, 2, 7, 8], [5, 5, 6, 6]])
    assert lab.classes == ["ship", "small-vehicle", "harbor"]
    np.testing.assert_array_equal(lab.difficult, [False, True, False])

    # load_labels: matched by stem anywhere below the folder, format from the content, YOLO ids
    # named through the classes.txt above the label folder; None without a label file.
    lab = det.load_labels(tmp_path, tmp_path / "img" / "frame.jpg", 100, 50)
    assert lab.classes == ["car", "minibus"]
    gt, dropped = det.map_classes(lab)
    np.testing.assert_array_equal(gt.classes, [2, 2])              # minibus -> COCO car
    assert det.load_labels(tmp_path / "labels", "frame.png", 100, 50).classes == ["car", "minibus"]
    assert det.load_labels(tmp_path, "frame.png", 100, 50, names=list("abcd")).classes == ["a", "d"]
    gt, dropped = det.map_classes(det.load_labels(tmp_path, "P1.png", 0, 0))
    np.testing.assert_array_equal(gt.classes, [8, 2])               # ship -> boat, small-vehicle -> car
    np.testing.assert_array_equal(gt.difficult, [False, True])
    assert dropped == {"harbor": 1}
    assert det.load_labels(tmp_path, "nothing.png", 10, 10) is None
    gt, dropped = det.map_classes(det.read_yolo_labels(tmp_path / "labels" / "frame.txt", 100, 50), {3: 5})
    assert gt.classes.tolist() == [5] and dropped == {"0": 1}

    (tmp_path / "bad.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        det.read_yolo_labels(tmp_path / "bad.txt", 10, 10)
    (tmp_path / "bad.txt").write_text("gsd:1\n1 2 3 4 5 6 7 x ship 0\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        det.read_dota_labels(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError):
        det.load_labels(tmp_path / "missing", "a.png", 1, 1)


def test_letterbox_and_tiles():
    canvas, p = det.letterbox(np.zeros((200, 400, 3), np.uint8), (640, 640), center=True)
    assert p == (1.6, 0, 160)
    assert canvas[159, 0, 0] == 114 and canvas[160, 0, 0] == 0 and canvas[479, 0, 0] == 0
    assert canvas[480, 0, 0] == 114
    canvas, p = det.letterbox(np.zeros((100, 208, 3), np.uint8), (416, 416), center=False)
    assert p == (2.0, 0, 0) and canvas[199, 0, 0] == 0 and canvas[200, 0, 0] == 114
    canvas, p = det.letterbox(np.zeros((100, 208, 3), np.uint8), (416, 416), center=True, scaleup=False)
    assert p == (1.0, 104, 158)
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (2, 1, 3))   # 2 x 64
    np.testing.assert_allclose(det.resize_bilinear(ramp, 2, 32)[0, :, 0], np.arange(2, 256, 8))
    assert det.tile_starts(1080, 640, 0.125) == [0, 440]
    assert det.tile_starts(1920, 640, 0.125) == [0, 560, 1120, 1280]
    assert det.tile_starts(500, 640, 0.125) == [0]
    assert det.output_format((1, 84, 8400), (640, 640)) == "yolov8"
    assert det.output_format((1, 3549, 85), (416, 416)) == "yolox"
    with pytest.raises(ValueError, match="unsupported detector output"):
        det.output_format((1, 100, 85), (416, 416))


def test_decode_yolov8_layout():
    # 200x400 image -> 640x640 canvas: scale 1.6, 320 rows high, 160 rows of padding above.
    _, p = det.letterbox(np.zeros((200, 400, 3), np.uint8), (640, 640), center=True)
    raw = np.zeros((1, 84, 8400), np.float32)
    raw[0, :4, 5] = [320, 320, 160, 64]        # box (240, 288, 400, 352) on the canvas
    raw[0, 4 + AIRPLANE, 5] = 0.9
    raw[0, :4, 6] = [322, 320, 160, 64]        # a weaker duplicate: suppressed by NMS
    raw[0, 4 + AIRPLANE, 6] = 0.5
    raw[0, :4, 7] = [100, 300, 20, 20]         # under conf
    raw[0, 4 + 2, 7] = 0.1
    raw[0, :4, 8] = [630, 330, 40, 40]         # overhangs the right edge: clipped to the image
    raw[0, 4 + 2, 8] = 0.3
    d = det.postprocess(raw, "yolov8", p, (200, 400), (640, 640), conf=0.25, iou=0.45)
    np.testing.assert_allclose(d.boxes, [[150, 80, 250, 120], [(610 / 1.6), (150 / 1.6), 400, (190 / 1.6)]],
                               rtol=1e-5)
    np.testing.assert_allclose(d.scores, [0.9, 0.3])
    np.testing.assert_array_equal(d.classes, [AIRPLANE, 2])


def test_decode_yolox_layout():
    # 100x208 image -> 416 canvas at the top-left, scale 2.
    _, p = det.letterbox(np.zeros((100, 208, 3), np.uint8), (416, 416), center=False)
    raw = np.zeros((1, 3549, 85), np.float32)
    row = 52 * 52 + 5 * 26 + 10                # stride 16, grid cell x=10, y=5
    raw[0, row, :4] = [0.5, 0.25, math.log(4), math.log(2)]   # centre (168, 84), 64 x 32
    raw[0, row, 4] = 0.8                       # objectness
    raw[0, row, 5 + AIRPLANE] = 0.9            # class probability: score 0.72
    d = det.postprocess(raw, "yolox", p, (100, 208), (416, 416), conf=0.25, iou=0.45)
    np.testing.assert_allclose(d.boxes, [[68, 34, 100, 50]], rtol=1e-5)
    np.testing.assert_allclose(d.scores, [0.72], rtol=1e-6)
    np.testing.assert_array_equal(d.classes, [AIRPLANE])
    with pytest.raises(ValueError, match="grid cells"):
        det.decode(raw[:, :100], "yolox", (416, 416), 0.25)


needs_models = pytest.mark.skipif(not YOLOV8.is_file() or not YOLOX.is_file(),
                                  reason="../shared/data/models not present")


@needs_models
@pytest.mark.parametrize("path,fmt", [(YOLOV8, "yolov8"), (YOLOX, "yolox")])
def test_shipped_detectors_find_the_airplane(path, fmt):
    im = np.asarray(Image.open(SHARED / "kodak" / "kodim20.png").convert("RGB"))
    d = det.Detector(path)
    assert d.format == fmt and d.names[AIRPLANE] == "airplane"
    found = d.detect(im)
    assert found.scores[0] > 0.5 and found.classes[0] == AIRPLANE
    x1, y1, x2, y2 = found.boxes[0]
    assert x1 < 100 and y1 < 120 and x2 > 700 and y2 > 450       # the plane fills most of the frame
    tiled = det.Detector(path, tile=True).detect(im)             # 416 / 640 tiles, native scale
    assert tiled.boxes.shape[1] == 4 and (tiled.boxes >= 0).all()
    assert (tiled.boxes[:, 2] <= 768).all() and (tiled.boxes[:, 3] <= 512).all()


def test_detector_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        det.Detector(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load"):
        det.Detector(tmp_path / "junk.onnx")
    if YOLOX.is_file():
        with pytest.raises(ValueError, match="conf"):
            det.Detector(YOLOX, conf=2)


@needs_models
def test_script_end_to_end(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("pcdc_jax.evaluation.codecs")
    data = tmp_path / "images"
    data.mkdir()
    coffee = sample_image()
    for i in range(3):
        Image.fromarray(coffee[100 * i:100 * i + 64, 150:246]).save(data / f"crop{i}.png")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "crop0.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (labels / "classes.txt").write_text("car\n")
    out = tmp_path / "det.json"
    args = ["--detector", str(YOLOX), "--data", str(data), "--labels", str(labels),
            "--model", str(tiny_model_dir), "--methods", "pcdc:uniform", "jpeg",
            "--ratio", "8", "--steps", "0", "--out", str(out)]
    load_script("detection").main(args)
    r = json.loads(out.read_text())
    assert r["format"] == "yolox" and r["ratio"] == 8
    assert r["methods"] == ["pcdc:uniform@0", "jpeg"]
    assert [im["image"] for im in r["images"]] == ["crop0.png", "crop1.png", "crop2.png"]
    for m in r["methods"]:
        s = r["summary"][m]
        assert s["images"] + sum(k["method"] == m for k in r["skipped"]) == 3
        assert set(s) >= {"count_ratio", "mean_conf_orig", "mean_conf_recon", "mean_iou", "recovered", "bpp"}
        for im in r["images"]:
            if m in im:
                assert im[m]["bytes"] <= 3 * 64 * 96 // 8
                assert im[m]["n_orig"] == im["original"]["n"]
    assert set(r["accuracy"]) == {"original", *r["methods"]}
    assert r["accuracy"]["original"]["images"] == 1
    assert r["accuracy"]["original"]["npos"] == {"car": 1}
    assert r["images"][0]["labels"] == {"n": 1, "mapped": 1, "dropped": {}}
    assert sorted(r["no_detections"]) == [im["image"] for im in r["images"] if im["original"]["n"] == 0]
    printed = capsys.readouterr()
    assert "| method |" in printed.out and "mAP@0.5" in printed.out
    for name in r["no_detections"]:
        assert f"{name}: the detector found nothing" in printed.err

    # resumable: a run killed after its first image (and halfway through a line) measures only the rest
    journal = out.with_suffix(".rows.jsonl")
    lines = journal.read_text().splitlines()
    assert len(lines) == 4
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    load_script("detection").main(args)
    assert "resuming: 1 images" in capsys.readouterr().err
    again = json.loads(out.read_text())

    def without_times(images):
        return [{k: {**v, "seconds": 0} if isinstance(v, dict) and "seconds" in v else v for k, v in im.items()}
                for im in images]
    assert without_times(again["images"]) == without_times(r["images"])
    assert again["accuracy"] == r["accuracy"] and again["summary"] == r["summary"]
    with pytest.raises(SystemExit, match="other settings.*another --out"):
        load_script("detection").main([*args[:-6], "--ratio", "12", "--steps", "0", "--out", str(out)])


def test_script_errors(tmp_path):
    script = load_script("detection")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="detection: error: detector model .*no such file"):
        script.main(["--detector", str(tmp_path / "none.onnx"), "--data", str(tmp_path / "empty")])
    if YOLOX.is_file():
        with pytest.raises(SystemExit, match="detection: error: no images"):
            script.main(["--detector", str(YOLOX), "--data", str(tmp_path / "empty")])
