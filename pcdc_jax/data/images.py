"""Image reading and writing (RGB uint8), padding to the codec grid, atomic writes."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pcdc_jax.data import geotiff
from pcdc_jax.errors import ImageReadError

_UMASK = os.umask(0o022)   # read once (os.umask can only be read by setting it)
os.umask(_UMASK)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


def read_image(path: str | os.PathLike, notices: list[str] | None = None) -> np.ndarray:
    """Reads an image file as RGB uint8 [H, W, 3].

    Grayscale, palette, RGBA, 16-bit and other modes are converted to 8-bit RGB; each conversion
    is described in `notices` (or emitted as a warning when `notices` is None).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = _to_rgb8(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except ImageReadError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from None
    if mode != "RGB":
        msg = f"{path.name}: converted {mode} image to RGB"
        if "A" in mode:
            msg += " (alpha channel dropped)"
        if notices is None:
            warnings.warn(msg, stacklevel=2)
        else:
            notices.append(msg)
    return arr


def _to_rgb8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(np.round(a * (255.0 if a.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"unsupported image layout {arr.shape}")
    return arr


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes to a temporary name in the same folder, then renames (never a half file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)        # what open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_image(path: str | os.PathLike, image: np.ndarray, metadata: dict | None = None) -> None:
    """Writes RGB uint8 [H, W, 3] atomically; the format follows the suffix (PNG, TIFF, ...).

    TIFFs are deflate-compressed and carry the GeoTIFF tags of a container's `metadata`
    (`geotiff.extratags`); other formats have no place for them.
    """
    import io

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in geotiff.TIFF_SUFFIXES:
        atomic_write_bytes(path, geotiff.tiff_bytes(image, metadata))
        return
    fmt = {".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}.get(suffix)
    if fmt is None:
        raise ValueError(f"{path}: unsupported output format (use .png, .tif, .bmp or .webp)")
    buf = io.BytesIO()
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(np.asarray(image, np.uint8), "RGB").save(buf, format=fmt, **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def pad_to_multiple(image: np.ndarray, multiple: int = 64) -> np.ndarray:
    """Edge-pads [H, W, C] on the bottom/right to multiples of `multiple`."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return image
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")


def to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def to_uint8(x) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)
