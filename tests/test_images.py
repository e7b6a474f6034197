import numpy as np
import pytest
from PIL import Image

from pcdc_jax.data.images import pad_to_multiple, read_image, write_image
from pcdc_jax.errors import ImageReadError


def test_formats_and_modes(tmp_path, coffee):
    img = coffee[:30, :40]
    Image.fromarray(img).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), img)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").shape == (30, 40, 3)
    g16 = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    notices = []
    out = read_image(tmp_path / "g16.png", notices)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8 and notices
    Image.fromarray(img).convert("RGBA").save(tmp_path / "a.png")
    notices = []
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", notices), img)
    assert "alpha" in notices[0]


def test_unreadable(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "x.png")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "missing.png")


def test_write_is_atomic_and_round_trips(tmp_path, coffee):
    write_image(tmp_path / "o.png", coffee)
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), coffee)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]
    (tmp_path / "plain").write_bytes(b"")            # the permissions open() gives, not 0600
    assert (tmp_path / "o.png").stat().st_mode == (tmp_path / "plain").stat().st_mode
    write_image(tmp_path / "o.tif", coffee)
    np.testing.assert_array_equal(read_image(tmp_path / "o.tif"), coffee)
    with pytest.raises(ValueError):
        write_image(tmp_path / "o.gif", coffee)


def test_pad_to_multiple():
    x = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    p = pad_to_multiple(x, 4)
    assert p.shape == (8, 8, 3)
    np.testing.assert_array_equal(p[:5, :7], x)
    np.testing.assert_array_equal(p[7, 7], x[4, 6])
