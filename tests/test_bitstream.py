import struct
import zlib

import pytest

from pcdc_jax import api
from pcdc_jax.codec import bitstream
from pcdc_jax.errors import ModelMismatchError, PCDCFormatError


@pytest.fixture(scope="module")
def small_file(tiny):
    from tests.conftest import sample_image
    return api.compress(sample_image()[:40, :70], tiny, level=2).data


def test_round_trip_fields(tiny, small_file):
    c = bitstream.unpack(small_file, max_pixels=10**6, fingerprint=tiny.model.fingerprint)
    assert (c.height, c.width, c.num_levels) == (40, 70, 5)
    assert bitstream.pack(c) == small_file


def test_every_truncation_is_rejected(tiny, small_file):
    for n in range(len(small_file)):
        with pytest.raises(PCDCFormatError):
            api.decompress(small_file[:n], tiny)


def test_every_flipped_byte_is_rejected(tiny, small_file):
    for pos in range(len(small_file)):
        bad = bytearray(small_file)
        bad[pos] ^= 0x41
        with pytest.raises((PCDCFormatError, ModelMismatchError)):
            api.decompress(bytes(bad), tiny)


def test_bad_magic_version_and_trailing_data(tiny, small_file):
    with pytest.raises(PCDCFormatError, match="magic"):
        api.decompress(b"\x89PNG" + small_file[4:], tiny)
    with pytest.raises(PCDCFormatError, match="version"):
        api.decompress(small_file[:4] + b"\x07" + small_file[5:], tiny)
    with pytest.raises(PCDCFormatError):
        api.decompress(small_file + b"junk", tiny)
    with pytest.raises(PCDCFormatError):
        api.decompress(b"", tiny)


def _with_head(data: bytes, **fields) -> bytes:
    """Rewrites HEAD fields and fixes its CRC (a well-formed file that lies)."""
    pre = bitstream._PREAMBLE.size
    tag, length = bitstream._SECTION.unpack_from(data, pre)
    start = pre + bitstream._SECTION.size
    h, w, tile, k, r, fp = bitstream._HEAD.unpack_from(data, start)
    vals = dict(h=h, w=w, tile=tile, k=k, fp=fp) | fields
    head = bitstream._HEAD.pack(vals["h"], vals["w"], vals["tile"], vals["k"], r, vals["fp"])
    sec = bitstream._SECTION.pack(tag, length) + head
    return data[:pre] + sec + struct.pack("<I", zlib.crc32(sec)) + data[start + length + 4:]


def test_absurd_sizes_and_wrong_model(tiny, small_file):
    with pytest.raises(PCDCFormatError, match="exceeds"):
        api.decompress(_with_head(small_file, h=2**31, w=2**31), tiny)
    with pytest.raises(PCDCFormatError):
        api.decompress(_with_head(small_file, h=0), tiny)
    with pytest.raises(PCDCFormatError):   # level map no longer matches the grid
        api.decompress(_with_head(small_file, h=4000), tiny)
    with pytest.raises(ModelMismatchError):
        api.decompress(_with_head(small_file, fp=b"\x00" * 16), tiny)
    with pytest.raises(ModelMismatchError):
        api.decompress(_with_head(small_file, k=3), tiny)


def test_info_needs_no_model(small_file):
    info = bitstream.read_header(small_file, 10**6)
    assert info["width"] == 70 and info["bytes"] == len(small_file)
    assert sum(info["level_histogram"]) == 4 * 8
