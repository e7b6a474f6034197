"""TfdsDataset on a real array_record dataset written by tfds itself, and on tfds mock data.

Neither needs TensorFlow: the tiny builder yields PNG bytes (tfds encodes numpy images with TF,
but stores encoded bytes as they are), and tfds writes and reads array_record without TF.
"""
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from pcdc_jax.data.tfds_source import TfdsDataset  # noqa: E402

NAME = "pcdc_test_images"   # registered by the class below, like a catalogue dataset (div2k)
N = 10


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class PcdcTestImages(tfds.core.GeneratorBasedBuilder):
    """N images of sizes (24 + k) x (32 - k); red is 10 + 20 k everywhere (tells which example a
    crop came from), green and blue are noise; "gray" is a one-channel noise image."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "gray": tfds.features.Image(shape=(None, None, 1))}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for k in range(N):
            rng = np.random.default_rng(k)
            im = rng.integers(0, 256, (24 + k, 32 - k, 3), dtype=np.uint8)
            im[..., 0] = 10 + 20 * k
            gray = rng.integers(0, 256, (24 + k, 32 - k), dtype=np.uint8)
            yield k, {"image": _png(im), "gray": _png(gray)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    PcdcTestImages(data_dir=d, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(d)


def _codes(batch: np.ndarray) -> set[int]:
    """The examples (by red value) the crops of a batch came from."""
    red = np.round(batch[..., 0] * 255).astype(int)
    assert (red == red[:, :1, :1]).all()   # each crop lies inside one image
    return set(red[:, 0, 0].tolist())


def test_batches_are_deterministic_crops_in_unit_range(data_dir):
    d = TfdsDataset(NAME, 16, seed=1, data_dir=data_dir)
    b = d.batch(0, 6)
    assert len(d) == N and d.image_key == "image"
    assert b.shape == (6, 16, 16, 3) and b.dtype == np.float32
    assert 0.0 <= b.min() and b.max() <= 1.0 and b.std() > 0.1
    np.testing.assert_array_equal(b, TfdsDataset(NAME, 16, seed=1, data_dir=data_dir).batch(0, 6))
    assert not np.array_equal(b, d.batch(1, 6))
    assert not np.array_equal(b, TfdsDataset(NAME, 16, seed=2, data_dir=data_dir).batch(0, 6))


def test_processes_read_disjoint_shards(data_dir):
    source = tfds.data_source(NAME, split="train", data_dir=data_dir, download=False)
    code = [int(source[i]["image"][0, 0, 0]) for i in range(N)]   # files are shuffled on write
    seen = []
    for p in range(2):
        d = TfdsDataset(NAME, 16, process_index=p, process_count=2, data_dir=data_dir)
        assert len(d) == N // 2
        seen.append(set().union(*(_codes(d.batch(s, 8)) for s in range(6))))
        assert seen[p] == {code[i] for i in range(p, N, 2)}
    assert not seen[0] & seen[1]


def test_grayscale_feature_fills_three_channels(data_dir):
    b = TfdsDataset(NAME, 16, data_dir=data_dir, image_key="gray").batch(3, 4)
    assert b.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(b[..., 0], b[..., 1])
    np.testing.assert_array_equal(b[..., 0], b[..., 2])


def test_bad_key_and_small_images_raise(data_dir):
    with pytest.raises(ValueError, match="no feature 'hr'"):
        TfdsDataset(NAME, 16, data_dir=data_dir, image_key="hr")
    d = TfdsDataset(NAME, 30, data_dir=data_dir)          # checked lazily, per batch
    with pytest.raises(ValueError, match=r"example \d+ \('image'\): \d+x\d+ image smaller"):
        d.batch(0, 8)


def test_unprepared_dataset_says_how_to_build(tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match=r"tfds build div2k/bicubic_x2 --data_dir .*"
                                                r"--file_format array_record"):
        TfdsDataset("div2k", 64, data_dir=str(empty))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        TfdsDataset(NAME, 16, data_dir=str(empty))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        TfdsDataset("no_such_dataset_xyz", 16, data_dir=str(empty))
    assert not empty.exists()   # nothing was downloaded or created


def test_mock_data_div2k(tmp_path):
    """tfds mock data (random images of 5 to 49 pixels a side) through the same code path."""
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        d = TfdsDataset("div2k", 4, seed=0, data_dir=str(tmp_path))
        b = d.batch(0, 5)
    assert d.image_key == "hr" and len(d) == 6
    assert b.shape == (5, 4, 4, 3) and b.dtype == np.float32 and 0 <= b.min() <= b.max() <= 1


def test_package_import_does_not_load_tfds():
    code = ("import sys, pcdc_jax.data.datasets, pcdc_jax.data.tfds_source; "
            "assert 'tensorflow_datasets' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_script_reports_an_unprepared_dataset_in_one_line(tmp_path):
    from tests.conftest import ROOT
    r = subprocess.run([sys.executable, "train/train_codec.py", "--preset", "tiny", "--tfds", "div2k",
                        "--data-dir", str(tmp_path / "none"), "--run", str(tmp_path / "run")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("train_codec.py: error: TFDS dataset 'div2k' is not prepared")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
