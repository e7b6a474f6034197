"""Object detection on originals and reconstructions (PCDC Table II), NumPy + onnxruntime only.

A `Detector` runs a YOLO-style ONNX model on the CPU and returns `Detections` (xyxy boxes in the
original image's pixels, scores, class ids). Two raw output layouts are understood, told apart
by the model's output shape:

- "yolov8" (Ultralytics YOLOv8/v11 export, no NMS inside): input [1, 3, S, S] RGB in [0, 1],
  letterboxed to the centre with pad 114; output [1, 4 + C, N]: centre x, centre y, width,
  height in input pixels, then C class scores (already sigmoid, no objectness).
- "yolox" (Megvii YOLOX export with raw head): input [1, 3, S, S] BGR in [0, 255], letterboxed to
  the top-left with pad 114; output [1, N, 5 + C] over the grid cells of strides 8, 16, 32:
  xy = (p[0:2] + grid) * stride, wh = exp(p[2:4]) * stride, score = p[4] * p[5:].

Each anchor keeps its best class (no multi-label), detections under `conf` are dropped, and
class-aware greedy NMS keeps at most `max_det`. With `tile`, a large frame is cut into
overlapping tiles of the model's input size at native resolution (no downscaling, so small
objects keep their pixels) and the tiles' detections are merged by NMS.

Ground truth comes from YOLO (`cls xc yc w h`, normalised) or DOTA (`x1 y1 ... x4 y4 class
difficult`, pixels, oriented quads taken to their axis-aligned boxes) label files, mapped onto
the detector's classes (`map_classes`). `compare` gives Table II's per-image quantities for a
reconstruction against the original; `average_precision` gives VOC AP@0.5 against labels.
"""
from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")

# Label class name -> COCO-80 class id, for the shipped aerial labels (shared/data/aerial_det:
# classes.txt of the Minsk drone set, and DOTA v1 names). A minibus is a car in COCO's sense
# (COCO's "bus" is the large kind); a cyclist's box is scored against "bicycle". Classes that
# have no COCO counterpart (harbor, storage-tank, courts, bridge, ...) are left out: their
# boxes are dropped and counted by `map_classes`.
DEFAULT_CLASS_MAP: dict[str, int] = {
    "car": 2, "truck": 7, "bus": 5, "minibus": 2, "cyclist": 1,                  # aerial_det
    "small-vehicle": 2, "large-vehicle": 7, "ship": 8, "plane": 4,              # DOTA v1
}

PAD_VALUE = 114
YOLOX_STRIDES = (8, 16, 32)
DEFAULT_OVERLAP = 0.125


class Detections(NamedTuple):
    """Detections of one image: boxes [n, 4] float32 (x1, y1, x2, y2) in the image's pixels,
    scores [n] float32 in [0, 1], classes [n] int64 (detector class ids), by descending score."""
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def select(self, index) -> Detections:
        """The detections at a boolean mask or integer index."""
        return Detections(self.boxes[index], self.scores[index], self.classes[index])

    def above(self, conf: float) -> Detections:
        """Only the detections with score >= conf."""
        return self.select(self.scores >= conf)


class Labels(NamedTuple):
    """Ground-truth boxes of one image as written in its label file: boxes [n, 4] float32 xyxy
    pixels, classes (n label classes: int ids, or names where known), difficult [n] bool
    (DOTA's flag; all False for YOLO labels)."""
    boxes: np.ndarray
    classes: list
    difficult: np.ndarray


class GroundTruth(NamedTuple):
    """Ground truth in the detector's classes: boxes [n, 4] float32 xyxy pixels, classes [n]
    int64 detector class ids, difficult [n] bool (neither counted nor penalised by AP)."""
    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray


class Letterbox(NamedTuple):
    """How an image was placed on the model's input canvas: input = image * scale + (pad_x, pad_y)."""
    scale: float
    pad_x: int
    pad_y: int


# ----------------------------------------------------------------------------- box geometry

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of a [n, 4] with every box of b [m, 4] (xyxy) -> [n, m].
    Boxes without area have IoU 0 with everything."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float = 0.45,
        classes: np.ndarray | None = None, max_det: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression -> indices of the kept boxes, by descending score.

    A box is suppressed by a higher-scored kept box when their IoU exceeds iou_thr. With
    `classes`, only boxes of the same class suppress each other (class-aware NMS: each class is
    shifted to its own region of the plane, so boxes of different classes never overlap).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    if classes is not None and len(boxes):
        shift = np.abs(boxes).max() * 2 + 1
        boxes = boxes + (np.asarray(classes, np.float64) * shift)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and (max_det is None or len(keep) < max_det):
        i, order = order[0], order[1:]
        keep.append(i)
        if order.size:
            order = order[iou_matrix(boxes[i], boxes[order])[0] <= iou_thr]
    return np.asarray(keep, np.int64)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """xyxy boxes [n, 4] clipped to an image of height x width pixels."""
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes


# ----------------------------------------------------------------------------- pre/post-processing

def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] -> float32 [height, width, C], bilinear with half-pixel centres (what OpenCV's
    INTER_LINEAR, used by the YOLO reference pipelines, computes; no antialiasing)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)

    def axis(n_out, n_in):
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    fy, fx = fy[:, None, None], fx[None, :, None]
    rows = image[y0].astype(np.float32) * (1 - fy) + image[y1].astype(np.float32) * fy
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def letterbox(image: np.ndarray, size: tuple[int, int], *, center: bool,
              scaleup: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resizes [H, W, 3] to fit size = (height, width) keeping its aspect ratio and pads with 114.

    center=True pads both sides equally (Ultralytics' LetterBox); False places the image at the
    top-left (YOLOX's preproc). scaleup=False never enlarges (native-resolution tiles).
    Returns the float32 [height, width, 3] canvas (0..255) and the placement.
    """
    h, w = image.shape[:2]
    th, tw = size
    scale = min(th / h, tw / w)
    if not scaleup:
        scale = min(scale, 1.0)
    nh, nw = min(th, int(round(h * scale))), min(tw, int(round(w * scale)))
    if center:   # Ultralytics: round(d / 2 - 0.1) before, the rest after
        pad_x, pad_y = int(round((tw - nw) / 2 - 0.1)), int(round((th - nh) / 2 - 0.1))
    else:
        pad_x = pad_y = 0
    canvas = np.full((th, tw, 3), PAD_VALUE, np.float32)
    canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = resize_bilinear(image, nh, nw)
    return canvas, Letterbox(float(scale), pad_x, pad_y)


def output_format(output_shape: Sequence[int], input_size: tuple[int, int]) -> str:
    """"yolov8" or "yolox" from a model's raw output shape; ValueError for anything else."""
    shape = tuple(output_shape)
    if len(shape) == 3 and shape[0] == 1 and all(isinstance(d, int) for d in shape):
        _, a, b = shape
        if 5 <= a < b:
            return "yolov8"                     # [1, 4 + C, N]: one column per anchor
        cells = sum((input_size[0] // s) * (input_size[1] // s) for s in YOLOX_STRIDES)
        if a == cells and b > 5:
            return "yolox"                      # [1, N, 5 + C] over the stride 8/16/32 grids
    raise ValueError(
        f"unsupported detector output shape {list(shape)} for input {list(input_size)}: expected "
        "YOLOv8 [1, 4+C, N] or raw YOLOX [1, cells of strides 8/16/32, 5+C]")


def decode(raw: np.ndarray, fmt: str, input_size: tuple[int, int],
           conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model's raw output -> (boxes [n, 4] xyxy in input pixels, scores [n], classes [n]) of the
    anchors whose best class scores at least conf (before NMS)."""
    raw = np.asarray(raw, np.float32)
    if fmt == "yolov8":
        p = raw.reshape(raw.shape[-2], raw.shape[-1]).T              # [N, 4 + C]
        xy, wh, cls_scores = p[:, :2], p[:, 2:4], p[:, 4:]
    elif fmt == "yolox":
        p = raw.reshape(raw.shape[-2], raw.shape[-1])                # [N, 5 + C]
        grids, strides = [], []
        for s in YOLOX_STRIDES:
            gy, gx = np.mgrid[:input_size[0] // s, :input_size[1] // s]
            grids.append(np.stack([gx.ravel(), gy.ravel()], -1))
            strides.append(np.full(gx.size, s))
        grid = np.concatenate(grids).astype(np.float32)
        stride = np.concatenate(strides).astype(np.float32)[:, None]
        if len(grid) != len(p):
            raise ValueError(f"YOLOX output has {len(p)} rows, the {list(input_size)} input has "
                             f"{len(grid)} grid cells")
        xy = (p[:, :2] + grid) * stride
        wh = np.exp(np.minimum(p[:, 2:4], 20.0)) * stride            # clamp: no overflow to inf
        cls_scores = p[:, 4:5] * p[:, 5:]
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected 'yolov8' or 'yolox'")
    classes = cls_scores.argmax(1)
    scores = cls_scores[np.arange(len(p)), classes]
    keep = scores >= conf
    xy, wh = xy[keep], wh[keep]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    return boxes, scores[keep], classes[keep].astype(np.int64)


def postprocess(raw: np.ndarray, fmt: str, placement: Letterbox, image_size: tuple[int, int],
                input_size: tuple[int, int], *, conf: float = 0.25, iou: float = 0.45,
                max_det: int = 300) -> Detections:
    """Raw output of one letterboxed canvas -> Detections in the original image's pixels:
    decode, class-aware NMS, undo the letterbox (subtract the pad, divide by the scale), clip to
    image_size = (height, width)."""
    boxes, scores, classes = decode(raw, fmt, input_size, conf)
    keep = nms(boxes, scores, iou, classes, max_det)
    boxes = (boxes[keep] - [placement.pad_x, placement.pad_y] * 2) / placement.scale
    return Detections(clip_boxes(boxes, *image_size), scores[keep].astype(np.float32), classes[keep])


def tile_starts(n: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, n) with at least `overlap` (a fraction
    of the tile) in common between neighbours; the last tile ends at n."""
    if n <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    return list(range(0, n - tile, step)) + [n - tile]


def _class_names(meta: Mapping[str, str], num_classes: int) -> list[str]:
    names = meta.get("names")
    if names:
        try:
            d = ast.literal_eval(names)
            if isinstance(d, dict):
                out = [str(d[k]) for k in sorted(d)]
            else:
                out = [str(n) for n in d]
            if len(out) == num_classes:
                return out
        except (ValueError, SyntaxError, TypeError, KeyError):
            pass
    if num_classes == len(COCO80):
        return list(COCO80)
    return [f"class{i}" for i in range(num_classes)]


class Detector:
    """A YOLO-style ONNX detector on onnxruntime's CPU provider.

    path: .onnx file (YOLOv8 or raw YOLOX layout, told apart by the output shape; input size
    from the model's static input shape). conf: minimum score kept; iou: NMS threshold.
    tile: None runs the whole frame letterboxed to the input size; a fraction in [0, 1) (or
    True for 1/8) runs overlapping native-resolution tiles of the input size with that overlap
    and merges them with NMS (for frames much larger than the input: a 4000x2250 frame at 640
    would shrink a 40-pixel car to 6 pixels). Attributes: format, input_size (h, w), names.
    """

    def __init__(self, path: str | Path, conf: float = 0.25, iou: float = 0.45,
                 tile: float | bool | None = None, max_det: int = 300):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"detector model {path}: no such file")
        if not 0 <= conf <= 1:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        if not 0 < iou <= 1:
            raise ValueError(f"iou must be in (0, 1], got {iou}")
        if tile is True:
            tile = DEFAULT_OVERLAP
        if tile is not None and tile is not False and not 0 <= tile < 1:
            raise ValueError(f"tile overlap must be in [0, 1), got {tile}")
        self.path, self.conf, self.iou, self.max_det = path, conf, iou, max_det
        self.tile = None if tile is None or tile is False else float(tile)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:     # onnxruntime raises its own exception types
            raise ValueError(f"detector model {path}: cannot load ({e})") from None
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or not all(isinstance(d, int) for d in inp.shape[2:]) \
                or inp.shape[1] != 3:
            raise ValueError(f"detector model {path}: expected a static input [1, 3, H, W], "
                             f"got {inp.shape}")
        self.input_name = inp.name
        self.input_size = (int(inp.shape[2]), int(inp.shape[3]))
        out_shape = list(self.session.get_outputs()[0].shape)
        if not all(isinstance(d, int) for d in out_shape):     # dynamic: look at a real output
            out_shape = list(self._run(np.full((*self.input_size, 3), PAD_VALUE, np.float32)).shape)
        self.format = output_format(out_shape, self.input_size)
        num_classes = out_shape[1] - 4 if self.format == "yolov8" else out_shape[2] - 5
        self.names = _class_names(self.session.get_modelmeta().custom_metadata_map, num_classes)

    def _run(self, canvas: np.ndarray) -> np.ndarray:
        """float32 [h, w, 3] RGB 0..255 canvas -> the model's raw output."""
        if getattr(self, "format", None) == "yolox":
            x = canvas[..., ::-1]                  # BGR, 0..255, as YOLOX was trained (OpenCV)
        else:
            x = canvas / 255.0
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def _detect_canvas(self, image: np.ndarray, scaleup: bool) -> Detections:
        canvas, placement = letterbox(image, self.input_size, center=self.format == "yolov8",
                                      scaleup=scaleup)
        return postprocess(self._run(canvas), self.format, placement, image.shape[:2],
                           self.input_size, conf=self.conf, iou=self.iou, max_det=self.max_det)

    def detect(self, image: np.ndarray) -> Detections:
        """Detections on uint8 [H, W, 3] RGB, boxes in its pixels, by descending score."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} "
                             f"{list(image.shape)}")
        if self.tile is None:
            return self._detect_canvas(image, scaleup=True)
        (th, tw), (h, w) = self.input_size, image.shape[:2]
        parts = []
        for y in tile_starts(h, th, self.tile):
            for x in tile_starts(w, tw, self.tile):
                d = self._detect_canvas(image[y:y + th, x:x + tw], scaleup=False)
                parts.append(d._replace(boxes=d.boxes + np.float32([x, y, x, y])))
        boxes = np.concatenate([d.boxes for d in parts])
        scores = np.concatenate([d.scores for d in parts])
        classes = np.concatenate([d.classes for d in parts])
        keep = nms(boxes, scores, self.iou, classes, self.max_det)
        return Detections(clip_boxes(boxes[keep], h, w), scores[keep], classes[keep])


# ----------------------------------------------------------------------------- labels

def read_yolo_labels(path: str | Path, width: int, height: int) -> Labels:
    """YOLO label file (one `class x_center y_center width height` line per box, normalised to
    [0, 1] by the image size; an optional sixth column is ignored) -> Labels in pixels of a
    width x height image, classes as int ids."""
    path = Path(path)
    boxes, classes = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            if len(tok) not in (5, 6):
                raise ValueError
            c, xc, yc, bw, bh = int(float(tok[0])), *map(float, tok[1:5])
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'class x_center y_center width height', "
                             f"got {line.strip()!r}") from None
        boxes.append([(xc - bw / 2) * width, (yc - bh / 2) * height,
                      (xc + bw / 2) * width, (yc + bh / 2) * height])
        classes.append(c)
    return Labels(clip_boxes(boxes, height, width), classes, np.zeros(len(classes), bool))


def read_dota_labels(path: str | Path) -> Labels:
    """DOTA v1 label file (optional `imagesource:` / `gsd:` header lines, then `x1 y1 x2 y2 x3 y3
    x4 y4 classname [difficult]` in pixels) -> Labels with each quadrilateral's axis-aligned
    bounding box, classes as names."""
    path = Path(path)
    boxes, classes, difficult = [], [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.split()
        if not tok or _is_header(tok):
            continue
        try:
            if len(tok) not in (9, 10):
                raise ValueError
            q = np.asarray(tok[:8], np.float64).reshape(4, 2)
            diff = bool(int(tok[9])) if len(tok) == 10 else False
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]', "
                             f"got {line.strip()!r}") from None
        boxes.append([*q.min(0), *q.max(0)])
        classes.append(tok[8])
        difficult.append(diff)
    return Labels(np.asarray(boxes, np.float32).reshape(-1, 4), classes, np.asarray(difficult, bool))


def _is_header(tok: list[str]) -> bool:
    """DOTA's `imagesource:...` / `gsd:...` lines (also with a space after the colon)."""
    return tok[0].split(":")[0].lower() in ("imagesource", "gsd") and ":" in tok[0]


def _is_dota(path: Path) -> bool:
    for line in path.read_text().splitlines():
        tok = line.split()
        if tok:
            return _is_header(tok) or len(tok) >= 9
    return False


def _find_class_names(label_file: Path, label_dir: Path) -> list[str] | None:
    """classes.txt (or *.names), one name per line, next to the label file or in a parent folder
    up to label_dir's parent."""
    stop = label_dir.resolve().parent
    d = label_file.resolve().parent
    while True:
        for f in [d / "classes.txt", *sorted(d.glob("*.names"))]:
            if f.is_file():
                return [s.strip() for s in f.read_text().splitlines() if s.strip()]
        if d == stop or d == d.parent:
            return None
        d = d.parent


def find_label_file(label_dir: str | Path, image_path: str | Path) -> Path | None:
    """`<stem>.txt` of the image in label_dir, else the shallowest one below it, else None."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise FileNotFoundError(f"label folder {label_dir}: no such folder")
    stem = Path(image_path).stem
    direct = label_dir / f"{stem}.txt"
    if direct.is_file():
        return direct
    found = sorted(label_dir.rglob(f"{stem}.txt"), key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def load_labels(label_dir: str | Path, image_path: str | Path, width: int, height: int,
                names: Sequence[str] | None = None) -> Labels | None:
    """The labels of an image (matched by stem, see `find_label_file`) in YOLO or DOTA format
    (told apart by the file's first line), or None when it has no label file.

    YOLO class ids become names through `names`, or else through a classes.txt found next to the
    label file or above it (up to label_dir's parent, as in shared/data/aerial_det); without
    either they stay ids.
    """
    label_dir = Path(label_dir)
    f = find_label_file(label_dir, image_path)
    if f is None:
        return None
    if _is_dota(f):
        return read_dota_labels(f)
    labels = read_yolo_labels(f, width, height)
    names = list(names) if names is not None else _find_class_names(f, label_dir)
    if names is not None:
        bad = [c for c in labels.classes if not 0 <= c < len(names)]
        if bad:
            raise ValueError(f"{f}: class id {bad[0]} not in the {len(names)} class names")
        labels = labels._replace(classes=[names[c] for c in labels.classes])
    return labels


def map_classes(labels: Labels, mapping: Mapping[int | str, int] | None = None
                ) -> tuple[GroundTruth, dict[str, int]]:
    """Label classes -> detector class ids. mapping: {label class (id or name): detector class
    id}; default DEFAULT_CLASS_MAP (aerial_det and DOTA names onto COCO-80). Boxes whose class
    is not in the mapping are dropped. Returns the ground truth and {label class: boxes dropped}."""
    mapping = DEFAULT_CLASS_MAP if mapping is None else mapping
    keep, ids, dropped = [], [], {}
    for i, c in enumerate(labels.classes):
        if c in mapping:
            keep.append(i)
            ids.append(int(mapping[c]))
        else:
            dropped[str(c)] = dropped.get(str(c), 0) + 1
    keep = np.asarray(keep, np.int64)
    return GroundTruth(labels.boxes[keep].reshape(-1, 4), np.asarray(ids, np.int64),
                       labels.difficult[keep]), dropped


# ----------------------------------------------------------------------------- scores

def compare(orig: Detections, recon: Detections, iou_thr: float = 0.5) -> dict:
    """Detections on a reconstruction against those on its original (PCDC Table II).

    Pairs are matched greedily by descending IoU, same class only, IoU >= iou_thr, each
    detection in at most one pair. Returns n_orig, n_recon, count_ratio (n_recon / n_orig; None
    when the original has none), mean_conf_orig / mean_conf_recon (None when empty), matched
    (pairs), mean_iou (over the pairs; None without any) and recovered (matched / n_orig).
    """
    iou = iou_matrix(orig.boxes, recon.boxes)
    iou[np.asarray(orig.classes)[:, None] != np.asarray(recon.classes)[None, :]] = 0.0
    rows, cols = np.nonzero(iou >= iou_thr)
    used_o, used_r, ious = set(), set(), []
    for k in np.argsort(-iou[rows, cols], kind="stable"):
        i, j = int(rows[k]), int(cols[k])
        if i not in used_o and j not in used_r:
            used_o.add(i)
            used_r.add(j)
            ious.append(float(iou[i, j]))
    n_o, n_r = len(orig.scores), len(recon.scores)
    return {
        "n_orig": n_o, "n_recon": n_r,
        "count_ratio": n_r / n_o if n_o else None,
        "mean_conf_orig": float(np.mean(orig.scores)) if n_o else None,
        "mean_conf_recon": float(np.mean(recon.scores)) if n_r else None,
        "matched": len(ious),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "recovered": len(ious) / n_o if n_o else None,
    }


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ all-point interpolation): precision made
    monotone from the right, summed over the steps of recall."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def average_precision(dets_per_image: Sequence[Detections], gts_per_image: Sequence[GroundTruth],
                      iou_thr: float = 0.5, conf: float | None = None,
                      classes: Sequence[int] | None = None) -> dict:
    """VOC average precision per class and mAP over a set of images.

    dets_per_image[i] and gts_per_image[i] belong to image i (GroundTruth: boxes, detector class
    ids, and `difficult` if it has one). classes: the detector classes evaluated (default: those
    in the ground truth); detections of other classes are ignored, since the labels say nothing
    about them. Per class, detections are taken by descending score: one matching a not yet
    matched ground truth of its class with IoU >= iou_thr is a true positive, else a false
    positive (one whose best match is `difficult` counts as neither). AP is the all-point
    interpolated area under precision-recall (`voc_ap`) for classes with ground truth; mAP is
    their mean (None without any). precision and recall are pooled over the evaluated classes for
    the detections with score >= conf (all of them when conf is None).

    Note AP only sees the detections it is given: run the detector with a low conf (e.g. 0.001)
    for the standard figure, and pass the operating threshold as `conf` for precision/recall.
    """
    if len(dets_per_image) != len(gts_per_image):
        raise ValueError(f"{len(dets_per_image)} detection sets but {len(gts_per_image)} "
                         "ground-truth sets")
    gts = []
    for g in gts_per_image:
        diff = getattr(g, "difficult", None)
        diff = np.zeros(len(g.classes), bool) if diff is None else np.asarray(diff, bool)
        gts.append((np.asarray(g.boxes, np.float32).reshape(-1, 4), np.asarray(g.classes, np.int64),
                    diff))
    if classes is None:
        classes = sorted({int(c) for _, cl, _ in gts for c in cl})
    ap, npos_all, tp_total, fp_total = {}, {}, 0, 0
    for c in classes:
        npos = int(sum(np.sum((cl == c) & ~df) for _, cl, df in gts))
        scores, img, idx = [], [], []
        for k, d in enumerate(dets_per_image):
            sel = np.nonzero(np.asarray(d.classes) == c)[0]
            scores.extend(np.asarray(d.scores)[sel])
            img.extend([k] * len(sel))
            idx.extend(sel)
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
        used = [np.zeros(len(cl), bool) for _, cl, _ in gts]
        tp, fp, sc = [], [], []
        for o in order:
            k, i = img[o], idx[o]
            gb, gc, gd = gts[k]
            ious = np.where(gc == c, iou_matrix(dets_per_image[k].boxes[i], gb)[0], -1.0)
            j = int(np.argmax(ious)) if len(ious) else -1
            if j >= 0 and ious[j] >= iou_thr:
                if gd[j]:
                    continue                     # a difficult object: neither TP nor FP
                hit = not used[k][j]
                used[k][j] = True
            else:
                hit = False
            tp.append(hit)
            fp.append(not hit)
            sc.append(scores[o])
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        if npos:
            npos_all[c] = npos
            ap[c] = voc_ap(tp_c / npos, tp_c / np.maximum(tp_c + fp_c, 1)) if len(tp) else 0.0
        n = len(sc) if conf is None else int(np.sum(np.asarray(sc) >= conf))
        tp_total += int(tp_c[n - 1]) if n else 0
        fp_total += int(fp_c[n - 1]) if n else 0
    npos = sum(npos_all.values())
    return {
        "ap": ap, "map": float(np.mean(list(ap.values()))) if ap else None, "npos": npos_all,
        "tp": tp_total, "fp": fp_total,
        "precision": tp_total / (tp_total + fp_total) if tp_total + fp_total else None,
        "recall": tp_total / npos if npos else None,
    }


def pool(rows: list[dict]) -> dict:
    """Table II quantities pooled over per-image `compare` results (each with its "bpp"): the mean
    count ratio over images, confidences and IoU over all detections."""
    n_o = sum(r["n_orig"] for r in rows)
    n_r = sum(r["n_recon"] for r in rows)
    matched = sum(r["matched"] for r in rows)
    ratios = [r["count_ratio"] for r in rows if r["count_ratio"] is not None]
    conf_o = sum(r["mean_conf_orig"] * r["n_orig"] for r in rows if r["n_orig"])
    conf_r = sum(r["mean_conf_recon"] * r["n_recon"] for r in rows if r["n_recon"])
    iou = sum(r["mean_iou"] * r["matched"] for r in rows if r["matched"])
    return {
        "images": len(rows), "n_orig": n_o, "n_recon": n_r,
        "count_ratio": float(np.mean(ratios)) if ratios else None,
        "mean_conf_orig": conf_o / n_o if n_o else None,
        "mean_conf_recon": conf_r / n_r if n_r else None,
        "matched": matched,
        "mean_iou": iou / matched if matched else None,
        "recovered": matched / n_o if n_o else None,
        "bpp": float(np.mean([r["bpp"] for r in rows])) if rows else None,
    }
