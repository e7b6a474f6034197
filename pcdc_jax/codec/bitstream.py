"""The .pcdc container, version 1.

  preamble  b"PCDC" | version u8 | reserved u8 u16
  sections  tag (4 ASCII) | length u32 | payload | crc32 u32 (over tag, length and payload)
            HEAD, META, LVLS, HYPR, then one TILE per tile in raster order, nothing after.
  HEAD      height u32 | width u32 | tile_latent u16 | num_levels u8 | reserved u8 | fingerprint 16B
  META      UTF-8 JSON object of key -> value (GeoTIFF tags and the like)
  LVLS      zlib of the level map, uint8 [H/16 padded, W/16 padded] (padded to the 64 grid)
  HYPR      range-coded z symbols
  TILE      crc32 of the tile's decoded symbols (int32 LE) u32 | range-coded y symbols

Little-endian throughout. The parser checks every length against what is left and every limit
before allocating, and raises PCDCFormatError (or ModelMismatchError) with a reason.
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib

import numpy as np

from pcdc_jax.errors import ModelMismatchError, PCDCFormatError

MAGIC = b"PCDC"
VERSION = 1
GRID = 64          # canvas padding multiple (encoder stride 16 x hyper stride 4)
BLOCK = 16
_PREAMBLE = struct.Struct("<4sBBH")
_SECTION = struct.Struct("<4sI")
_HEAD = struct.Struct("<IIHBB16s")
MAX_META_BYTES = 1 << 24


@dataclasses.dataclass
class Container:
    height: int
    width: int
    tile_latent: int
    num_levels: int
    fingerprint: bytes
    levels: np.ndarray                  # uint8 [hl, wl] over the padded canvas
    z_stream: bytes
    tiles: list[tuple[int, bytes]]      # (symbol crc32, stream) per tile, raster order
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return latent_shape(self.height, self.width)


def latent_shape(height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of latent positions (= 16x16 blocks) of the canvas padded to 64."""
    return math.ceil(height / GRID) * GRID // BLOCK, math.ceil(width / GRID) * GRID // BLOCK


def tile_grid(hl: int, wl: int, tile: int) -> list[tuple[slice, slice]]:
    """Latent slices of each tile, raster order."""
    return [(slice(r, min(r + tile, hl)), slice(c, min(c + tile, wl)))
            for r in range(0, hl, tile) for c in range(0, wl, tile)]


def symbols_crc(symbols: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes())


def _section(tag: bytes, payload: bytes) -> bytes:
    head = _SECTION.pack(tag, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(head + payload))


def pack(c: Container) -> bytes:
    out = [_PREAMBLE.pack(MAGIC, VERSION, 0, 0),
           _section(b"HEAD", _HEAD.pack(c.height, c.width, c.tile_latent, c.num_levels, 0,
                                        c.fingerprint)),
           _section(b"META", json.dumps(c.metadata, sort_keys=True).encode()),
           _section(b"LVLS", zlib.compress(np.ascontiguousarray(c.levels, np.uint8).tobytes(), 9)),
           _section(b"HYPR", c.z_stream)]
    out += [_section(b"TILE", struct.pack("<I", crc) + stream) for crc, stream in c.tiles]
    return b"".join(out)


def _sections(data: bytes):
    pos = _PREAMBLE.size
    while pos < len(data):
        if len(data) - pos < _SECTION.size:
            raise PCDCFormatError(f"truncated file: incomplete section header at byte {pos}")
        tag, length = _SECTION.unpack_from(data, pos)
        end = pos + _SECTION.size + length
        if end + 4 > len(data):
            raise PCDCFormatError(
                f"truncated file: section {tag!r} at byte {pos} needs {length} bytes, "
                f"{max(0, len(data) - pos - _SECTION.size - 4)} left")
        (crc,) = struct.unpack_from("<I", data, end)
        if zlib.crc32(data[pos:end]) != crc:
            raise PCDCFormatError(f"checksum mismatch in section {tag!r} at byte {pos} (corrupted file)")
        yield tag, data[pos + _SECTION.size:end]
        pos = end + 4


def unpack(data: bytes, *, max_pixels: int, fingerprint: bytes | None = None,
           num_levels: int | None = None) -> Container:
    """Parses and verifies a .pcdc file. With `fingerprint`, rejects files of other models."""
    data = bytes(data)
    if len(data) < _PREAMBLE.size:
        raise PCDCFormatError(f"not a .pcdc file: {len(data)} bytes is shorter than the header")
    magic, version, flags, reserved = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise PCDCFormatError(f"not a .pcdc file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PCDCFormatError(f"unsupported .pcdc version {version} (this build reads {VERSION})")
    if flags or reserved:
        raise PCDCFormatError(f"unsupported header flags {flags:#x}/{reserved:#x} (corrupted file?)")
    sections = _sections(data)
    tag, head = _expect(sections, b"HEAD")
    if len(head) != _HEAD.size:
        raise PCDCFormatError(f"HEAD section has {len(head)} bytes, expected {_HEAD.size}")
    height, width, tile, levels_k, reserved, fp = _HEAD.unpack(head)
    if reserved:
        raise PCDCFormatError(f"unsupported HEAD flags {reserved:#x}")
    if height < 1 or width < 1:
        raise PCDCFormatError(f"invalid image size {width}x{height}")
    if height * width > max_pixels:
        raise PCDCFormatError(f"image size {width}x{height} exceeds the limit of {max_pixels} pixels")
    if tile < 1:
        raise PCDCFormatError("invalid tile size 0")
    if fingerprint is not None and fp != fingerprint:
        raise ModelMismatchError(
            f"file was written by model {fp.hex()}, not the loaded model {fingerprint.hex()}")
    if num_levels is not None and levels_k != num_levels:
        raise ModelMismatchError(f"file uses {levels_k} levels, the model has {num_levels}")
    _, meta = _expect(sections, b"META")
    if len(meta) > MAX_META_BYTES:
        raise PCDCFormatError("metadata section too large")
    try:
        metadata = json.loads(meta.decode()) if meta else {}
        if not isinstance(metadata, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise PCDCFormatError(f"bad metadata section ({e})") from None
    hl, wl = latent_shape(height, width)
    _, lv = _expect(sections, b"LVLS")
    try:
        d = zlib.decompressobj()
        raw = d.decompress(lv, hl * wl + 1)
        if not d.eof or d.unconsumed_tail or len(raw) != hl * wl:
            raise zlib.error(f"level map holds {len(raw)} bytes, expected {hl * wl}")
    except zlib.error as e:
        raise PCDCFormatError(f"bad level map ({e})") from None
    levels = np.frombuffer(raw, np.uint8).reshape(hl, wl)
    if levels.max(initial=0) >= max(levels_k, 1):
        raise PCDCFormatError(f"level map holds level {levels.max()} of only {levels_k}")
    _, z_stream = _expect(sections, b"HYPR")
    n_tiles = len(tile_grid(hl, wl, tile))
    tiles = []
    for i in range(n_tiles):
        _, payload = _expect(sections, b"TILE", f"tile {i} of {n_tiles}")
        if len(payload) < 4:
            raise PCDCFormatError(f"tile {i} section is too short")
        tiles.append((struct.unpack_from("<I", payload)[0], payload[4:]))
    extra = next(sections, None)
    if extra is not None:
        raise PCDCFormatError(f"unexpected section {extra[0]!r} after the last tile")
    return Container(height, width, tile, levels_k, fp, levels, z_stream, tiles, metadata)


def _expect(sections, tag: bytes, what: str | None = None):
    try:
        got, payload = next(sections)
    except StopIteration:
        raise PCDCFormatError(f"truncated file: missing {what or tag.decode()} section") from None
    if got != tag:
        raise PCDCFormatError(f"expected section {tag!r}, found {got!r}")
    return got, payload


def read_header(data: bytes, max_pixels: int) -> dict:
    """What `pcdc info` shows, without a model."""
    c = unpack(data, max_pixels=max_pixels)
    hl, wl = c.latent_shape
    counts = np.bincount(c.levels.ravel(), minlength=c.num_levels)
    return {
        "version": VERSION, "width": c.width, "height": c.height, "bytes": len(data),
        "bpp": 8 * len(data) / (c.width * c.height),
        "ratio": 3 * c.width * c.height / len(data),
        "latent_grid": [hl, wl], "tile_latent": c.tile_latent, "tiles": len(c.tiles),
        "num_levels": c.num_levels, "level_histogram": counts.tolist(),
        "model_fingerprint": c.fingerprint.hex(), "hyper_bytes": len(c.z_stream),
        "tile_bytes": sum(len(s) + 4 for _, s in c.tiles), "metadata": c.metadata,
    }
