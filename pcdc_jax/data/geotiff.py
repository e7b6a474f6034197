"""GeoTIFF georeferencing: read the geo tags of a TIFF, carry them in a .pcdc file's metadata
section, and write them back into a decoded TIFF so GIS tools see the same georeferencing.

The tags kept are the GeoTIFF ones (model pixel scale, tie points, transformation, the GeoKey
directory and its double and ASCII parameters) and GDAL's (metadata XML, nodata). In the
container they are one metadata entry, `"geotiff": {"<tag code>": {"type": T, "value": V}}`,
with T the TIFF data type (2 ASCII, 3 SHORT, 4 LONG, 11 FLOAT, 12 DOUBLE, 16 LONG8) and V a
string (ASCII) or a list of numbers; JSON keeps doubles exactly.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from pcdc_jax.errors import PCDCFormatError

META_KEY = "geotiff"
TAGS = {33550: "ModelPixelScale", 33922: "ModelTiepoint", 34264: "ModelTransformation",
        34735: "GeoKeyDirectory", 34736: "GeoDoubleParams", 34737: "GeoAsciiParams",
        42112: "GDAL_METADATA", 42113: "GDAL_NODATA"}
_ASCII = 2
_NUMERIC = {3: int, 4: int, 16: int, 11: float, 12: float}
TIFF_SUFFIXES = (".tif", ".tiff")


def read_tags(path: str | os.PathLike) -> dict:
    """The geo tags of a TIFF file as a metadata entry ({} for other files or a plain TIFF).
    Pixels are read elsewhere (`images.read_image`); a TIFF tifffile cannot parse has no tags."""
    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return {}
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            found = {code: (int(tags[code].dtype), tags[code].value) for code in TAGS if code in tags}
    except (OSError, ValueError, tifffile.TiffFileError):
        return {}
    out = {}
    for code, (kind, value) in found.items():
        if kind == _ASCII:
            value = value if isinstance(value, str) else bytes(value).decode("latin-1")
        elif kind in _NUMERIC:
            value = np.atleast_1d(np.asarray(value)).tolist()
        else:
            continue                    # a type GIS writers do not use for these tags
        out[str(code)] = {"type": kind, "value": value}
    return out


def metadata_of(path: str | os.PathLike) -> dict:
    """The container metadata to keep for an input image: {"geotiff": ...} or {}."""
    tags = read_tags(path)
    return {META_KEY: tags} if tags else {}


def extratags(metadata: dict) -> list[tuple]:
    """tifffile `extratags` for the geo tags in a container's metadata ([] without any).

    The metadata comes from a file, so every entry is checked: PCDCFormatError names the bad one.
    """
    tags = metadata.get(META_KEY)
    if tags is None:
        return []
    if not isinstance(tags, dict):
        raise PCDCFormatError("bad geotiff metadata: not an object")
    out = []
    for key, entry in sorted(tags.items(), key=lambda kv: kv[0]):
        try:
            code = int(key)
            kind, value = entry["type"], entry["value"]
            if code not in TAGS:
                raise ValueError(f"tag {code} is not a geo tag")
            if kind == _ASCII:
                if not isinstance(value, str):
                    raise ValueError("ASCII value is not a string")
                out.append((code, kind, 0, value, True))
                continue
            cast = _NUMERIC[kind]
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError("value is not a list of numbers")
            out.append((code, kind, len(value), tuple(cast(v) for v in value), True))
        except (KeyError, TypeError, ValueError) as e:
            raise PCDCFormatError(f"bad geotiff metadata entry {key!r}: {e}") from None
    return out


def tiff_bytes(image: np.ndarray, metadata: dict | None = None) -> bytes:
    """RGB uint8 [H, W, 3] as a deflate-compressed TIFF, with the geo tags of `metadata`."""
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.asarray(image, np.uint8), photometric="rgb", compression="zlib",
                     predictor=True, extratags=extratags(metadata or {}), metadata=None)
    return buf.getvalue()
