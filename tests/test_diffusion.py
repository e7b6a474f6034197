import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pcdc_jax import api, checkpoint, config
from pcdc_jax.codec.model import Codec
from pcdc_jax.diffusion import sampler, schedule, training, unet, windows
from pcdc_jax.diffusion.decode import WindowDecoder
from tests.conftest import ROOT, SAMPLES, perturbed, sample_image


def latent_of(rt, image, level=2):
    """(y_hat, levels) of an image as the decoder sees them after entropy decoding."""
    c = rt.parse(api.compress(image, rt, level=level).data)
    symbols, mu = rt.decode_latent(c)
    return rt.dequantize(symbols, mu, c.levels), c.levels


def with_windows(cfg, **kw):
    return dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, **kw))


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_runs_from_clean_to_noise(kind):
    t = jnp.linspace(0, 1, 101)
    a = np.asarray(schedule.alpha_bar(t, kind))
    assert a[0] == pytest.approx(1.0) and a[-1] < 1e-4 and (np.diff(a) < 0).all()
    assert np.isinf(schedule.snr(0.0, kind)) or schedule.snr(0.0, kind) > 1e6
    np.testing.assert_allclose(np.exp(schedule.log_snr(t[1:-1], kind)), schedule.snr(t[1:-1], kind), rtol=1e-4)


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (3, 0.0), (5, 1.0)])
def test_ddim_ends_at_the_prediction(steps, eta):
    target = jnp.full((2, 16, 16, 3), 0.3)
    calls = []

    def denoise(r, t):
        calls.append(t)
        return target + 0.0 * r

    noise = lambda i: jax.random.normal(jax.random.PRNGKey(i), target.shape)  # noqa: E731
    out = sampler.ddim(denoise, noise, steps, eta)
    np.testing.assert_allclose(out, target, atol=1e-6)


def test_ddim_from_a_partly_noised_start():
    """t_start < 1 starts at sqrt(1 - alpha_bar(t_start)) * noise (x_base noised to t_start)."""
    noise = lambda i: jnp.ones((1, 16, 16, 3))  # noqa: E731
    out = sampler.ddim(lambda r, t: jnp.zeros_like(r), noise, 4, 0.0, "cosine", t_start=0.4)
    np.testing.assert_allclose(out, 0.0, atol=1e-6)
    start = jax.jit(lambda: sampler.ddim(lambda r, t: r, noise, 1, 0.0, "cosine", t_start=0.4))()
    np.testing.assert_allclose(start, np.sqrt(1 - float(schedule.alpha_bar(0.4))), rtol=1e-5)
    with pytest.raises(ValueError):
        config.DiffusionConfig(t_start=0.0)


def test_ddim_moves_toward_a_linear_denoiser_fixed_point():
    # denoise(r) = r / 2: every step shrinks r; eta=0 is a deterministic function of the start.
    noise = lambda i: jax.random.normal(jax.random.PRNGKey(i), (1, 16, 16, 3))  # noqa: E731
    a = sampler.ddim(lambda r, t: r / 2, noise, 4, 0.0)
    b = sampler.ddim(lambda r, t: r / 2, noise, 4, 0.0)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a).mean()) < float(jnp.abs(noise(0)).mean())


def test_unet_starts_at_zero():
    cfg = config.tiny()
    p = unet.init_params(cfg.diffusion, unet.feature_channels(cfg.codec), jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))
    feats = {s: jax.random.normal(jax.random.PRNGKey(s), (2, 32 // s, 32 // s, c))
             for s, c in unet.feature_channels(cfg.codec).items()}
    t = jnp.array([0.2, 0.9])
    out = unet.UNet(cfg.diffusion).apply({"params": p}, x, t, x, feats)
    assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0   # zero-initialised output
    out = jax.jit(lambda p, *a: unet.UNet(cfg.diffusion).apply({"params": p}, *a))(
        perturbed(p), x, t, x, feats)
    assert out.shape == x.shape and 0 < float(jnp.abs(out).mean()) < 100


@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from([(128, 32), (128, 0), (64, 48)]))
@settings(max_examples=40, deadline=None)
def test_window_plan_covers_the_canvas_with_nested_crops(hl, wl, win):
    cfg = with_windows(config.tiny(), window=win[0], overlap=win[1])
    p = windows.plan(hl, wl, cfg)
    cover = np.zeros((hl, wl), int)
    for (y, x) in p.origins:
        cover[y:y + p.size[0], x:x + p.size[1]] += 1
    assert (cover >= 1).all()
    assert p.starts.min() >= 0 and (p.starts + np.array(p.crop_sizes)[None] <= [hl, wl]).all()
    np.testing.assert_array_equal(p.starts[:, -1], p.origins)
    # windows are in raster order and ids never depend on anything but the size and config
    assert [tuple(o) for o in p.origins] == sorted(tuple(o) for o in p.origins)


def test_windowed_base_image_equals_the_whole_canvas_decoder(tiny_diffusion, coffee):
    y_hat, levels = latent_of(tiny_diffusion, coffee[:300, :400])
    whole, _ = Codec(tiny_diffusion.cfg.codec).apply(
        {"params": tiny_diffusion.model.params}, jnp.asarray(y_hat)[None],
        jnp.asarray(levels.astype(np.int32))[None], method=Codec.synthesis)
    windowed = tiny_diffusion.decoder().decode(y_hat, levels, steps=0)
    assert windows.plan(*levels.shape, tiny_diffusion.cfg).num_windows > 1
    np.testing.assert_allclose(windowed, np.asarray(whole[0]), atol=1e-6)
    from pcdc_jax.data.images import to_uint8
    np.testing.assert_array_equal(tiny_diffusion.synthesize(y_hat, levels, 300, 400, steps=0),
                                  to_uint8(np.asarray(whole[0, :300, :400])))


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_same_image_on_1_or_4_devices_and_any_window_batch(tiny_diffusion, coffee, steps):
    assert len(jax.devices()) == 4
    data = api.compress(coffee[:200, :300], tiny_diffusion, level=3).data
    outs = {(d, b): api.decompress(data, tiny_diffusion, steps=steps, seed=7, devices=d, batch=b)
            for d in (1, 4) for b in (1, 8)}
    ref = outs[(1, 1)]
    for k, v in outs.items():
        assert np.abs(v.astype(int) - ref).max() == 0, k
    if steps:
        x_base = api.decompress(data, tiny_diffusion, steps=0)
        assert np.abs(ref.astype(int) - x_base).mean() > 0.5          # the U-Net did something
        other = api.decompress(data, tiny_diffusion, steps=steps, seed=8)
        assert not np.array_equal(other, ref)                          # the seed matters
        np.testing.assert_array_equal(
            api.decompress(data, tiny_diffusion, steps=steps, seed=7), ref)   # eta=0: deterministic


def test_eta_adds_fresh_noise(tiny_diffusion, coffee):
    data = api.compress(coffee[:128, :128], tiny_diffusion, level=3).data
    a = api.decompress(data, tiny_diffusion, steps=3, seed=1, eta=1.0)
    np.testing.assert_array_equal(a, api.decompress(data, tiny_diffusion, steps=3, seed=1, eta=1.0))
    assert not np.array_equal(a, api.decompress(data, tiny_diffusion, steps=3, seed=1, eta=0.0))


def test_one_compiled_call_per_window_batch(tiny_diffusion_model_dir, coffee):
    m = checkpoint.load_model(tiny_diffusion_model_dir)
    rt = api.Runtime(m)
    y_hat, levels = latent_of(rt, coffee[:300, :400])
    dec = WindowDecoder(m.cfg, m.params, m.unet, devices=4)
    n = windows.plan(*levels.shape, m.cfg).num_windows
    dec.decode(y_hat, levels, steps=4, batch=4)
    dec.decode(y_hat, levels, steps=4, batch=4, seed=3)
    assert n > 4 and dec.calls == 2 * math.ceil(n / 4) and dec.traces == 1


def test_large_image_decodes_without_seams(tiny_diffusion):
    big = np.tile(sample_image(), (3, 3, 1))[:1000, :1500]
    y_hat, levels = latent_of(tiny_diffusion, big)
    p = windows.plan(*levels.shape, tiny_diffusion.cfg)
    out = tiny_diffusion.synthesize(y_hat, levels, 1000, 1500, steps=2)
    assert out.shape == (1000, 1500, 3) and p.num_windows > 100
    assert windows.seam_ratio(out, p) <= 1.1 and windows.seam_ratio(out, p, baseline="all") <= 1.1


def test_overlapping_windows_track_the_whole_canvas_sample(tiny_diffusion):
    y_hat, levels = latent_of(tiny_diffusion, sample_image("astronaut.png")[:256, :384])
    m = tiny_diffusion.model

    def decode(steps, **kw):
        cfg = with_windows(m.cfg, **kw)
        return WindowDecoder(cfg, m.params, m.unet).decode(y_hat, levels, steps=steps, seed=5)

    base = decode(0, window=128, overlap=32)
    whole = decode(2, window=512, overlap=0)              # one window: no windowing at all
    dev = {ov: np.abs(decode(2, window=128, overlap=ov) - whole).mean() / np.abs(whole - base).mean()
           for ov in (0, 32)}
    assert dev[32] < 0.8 * dev[0] and dev[32] < 0.25


def test_seam_ratio_detects_window_edges():
    cfg = with_windows(config.tiny(), window=128, overlap=0)
    p = windows.plan(16, 24, cfg)
    # a stationary smooth texture: white noise through a 9x9 box filter
    noise = np.random.default_rng(0).normal(0, 60, (264, 392, 3))
    box = np.ones(9) / 9
    smooth = np.apply_along_axis(lambda v: np.convolve(v, box, "valid"), 0, noise)
    smooth = np.apply_along_axis(lambda v: np.convolve(v, box, "valid"), 1, smooth) + 128
    for baseline in ("grid", "all"):
        assert windows.seam_ratio(smooth, p, baseline) == pytest.approx(1.0, abs=0.1)
    tiled = smooth.copy()
    for i, (oy, ox) in enumerate(p.origins):
        tiled[oy * 16:(oy + p.size[0]) * 16, ox * 16:(ox + p.size[1]) * 16] += 3.0 * (i % 2 * 2 - 1)
    assert windows.seam_ratio(tiled, p) > 1.5 and windows.seam_ratio(tiled, p, "all") > 1.5


def test_diffusion_loss_falls(tiny_model_dir):
    m = checkpoint.load_model(tiny_model_dir)
    cfg = m.cfg.override(["train.learning_rate=0.003", "train.lr_warmup_steps=1", "train.total_steps=60"])
    from pcdc_jax.data.datasets import FolderDataset
    data = FolderDataset(SAMPLES, 64, seed=0)
    state = training.init_state(cfg, jax.random.PRNGKey(0))
    step = training.jit_train_step(cfg)
    x_eval = jnp.asarray(data.batch(10_000, 8))
    lv = training.random_levels(jax.random.PRNGKey(9), 8, 4, 4, cfg.codec.num_levels)
    x_base, feats = training.condition(m.params, x_eval, lv, cfg)
    eval_loss = jax.jit(lambda p: training.loss_fn(p, x_eval, x_base, feats, jax.random.PRNGKey(3), cfg)[0])
    before = float(eval_loss(state.params))
    for i in range(60):
        state, metrics = step(state, jnp.asarray(data.batch(i, 4)), jax.random.PRNGKey(100 + i), m.params)
    assert np.isfinite(float(metrics["loss"]))
    assert float(eval_loss(state.params)) < 0.8 * before


def test_chain_of_one_step_trains_on_the_samplers_first_input(monkeypatch):
    """With chain_steps=1 and chain_fraction=1 every image is trained at t_start on x_base noised
    without the residual (what a truncated sampler starts from); with fraction 0, the input
    carries the residual."""
    seen = []

    class Probe:
        def __init__(self, d):
            pass

        def apply(self, variables, r_t, t, x_base, features):
            seen.append((np.asarray(r_t), np.asarray(t)))
            return jnp.zeros_like(r_t)

    monkeypatch.setattr(training, "UNet", Probe)
    monkeypatch.setattr(sampler, "UNet", Zero)          # the chain's (empty) loop is traced too
    x_base = jnp.full((2, 16, 16, 3), 0.5)
    key = jax.random.PRNGKey(0)
    for fraction in (1.0, 0.0):
        cfg = config.tiny().override([f"diffusion.chain_fraction={fraction}", "diffusion.chain_steps=1",
                                      "diffusion.t_start=0.4"])
        for x in (x_base + 0.05, x_base - 0.05):
            training.loss_fn(None, x, x_base, {}, key, cfg)
    (a, ta), (b, tb), (c, tc), (d, td) = seen
    np.testing.assert_allclose(ta, [0.4, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(a, b)                   # no residual in the input
    assert a.std() == pytest.approx(np.sqrt(1 - float(schedule.alpha_bar(0.4))), rel=0.1)
    assert (tc < 0.4).all() and not np.array_equal(c, d)   # ordinary training: it is there


class Zero:
    def __init__(self, d):
        pass

    def apply(self, variables, r_t, t, x_base, features):
        return jnp.zeros_like(r_t)


def chain_inputs(steps, t_start=0.6):
    cfg = config.tiny().override([f"diffusion.chain_steps={steps}", f"diffusion.t_start={t_start}"])
    p = perturbed(unet.init_params(cfg.diffusion, unet.feature_channels(cfg.codec), jax.random.PRNGKey(0)))
    x_base = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))
    feats = {s: jax.random.normal(jax.random.PRNGKey(s), (2, 32 // s, 32 // s, c))
             for s, c in unet.feature_channels(cfg.codec).items()}
    return cfg, p, x_base, feats


def test_chain_states_are_where_the_decode_time_sampler_stands():
    """The chain's state after k steps, denoised once more, is what `sampler.ddim` with the same
    denoiser and noise returns when k is its last step; t is on the sampler's grid."""
    cfg, p, x_base, feats = chain_inputs(steps=3)
    denoise = sampler.denoiser(cfg.diffusion, p, x_base, feats)
    grid = np.linspace(0.6, 0.0, 4)

    @jax.jit
    def chain_and_sampler(key):
        r, t = training.chain_states(p, x_base, feats, key, cfg)
        kn = jax.random.split(key)[1]
        full = sampler.ddim(denoise, lambda i: jax.random.normal(jax.random.fold_in(kn, i), x_base.shape),
                            3, cfg.diffusion.eta, cfg.diffusion.schedule, 0.6)
        return t, denoise(r, t[:1]), full

    ks = set()
    for seed in range(8):
        t, last, full = chain_and_sampler(jax.random.PRNGKey(seed))
        k = int(np.argmin(np.abs(grid - float(t[0]))))
        assert t.shape == (2,) and float(t[0]) == pytest.approx(grid[k]) and k < 3
        ks.add(k)
        if k == 2:
            np.testing.assert_allclose(last, full, atol=1e-5)
    assert ks == {0, 1, 2}                                # every step of the chain gets trained


def test_chain_training_has_gradients_and_reports_its_own_lpips():
    cfg, p, x_base, feats = chain_inputs(steps=4)
    cfg = cfg.override(["diffusion.chain_fraction=0.5", "diffusion.lpips_weight=0.5"])
    from pcdc_jax.metrics import weights
    x = jnp.clip(x_base + 0.05 * jax.random.normal(jax.random.PRNGKey(5), x_base.shape), 0, 1)
    grads, m = jax.jit(jax.grad(training.loss_fn, has_aux=True), static_argnums=5)(
        p, x, x_base, feats, jax.random.PRNGKey(2), cfg, weights.load("alex"))
    assert float(optax_norm(grads)) > 0 and np.isfinite(float(m["loss"]))
    assert {"lpips_chain", "lpips_chain_base"} <= set(m)


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def test_train_script_exports_a_model_that_decodes(tmp_path, tiny_model_dir, coffee, capsys):
    sys.path.insert(0, str(ROOT / "train"))
    import train_diffusion
    run, out = tmp_path / "run", tmp_path / "model"
    argv = ["--model", str(tiny_model_dir), "--data", str(SAMPLES), "--run", str(run),
            "--set", "train.crop_size=64", "train.batch_size=4", "diffusion.default_steps=2"]
    train_diffusion.main(argv + ["--steps", "2", "--export", str(out)])
    # resuming restores the state: exporting again without training gives the same U-Net
    train_diffusion.main(argv + ["--steps", "2", "--resume", "--export", str(tmp_path / "again")])
    m = checkpoint.load_model(out)
    for a, b in zip(jax.tree.leaves(m.unet), jax.tree.leaves(checkpoint.load_model(tmp_path / "again").unet)):
        np.testing.assert_array_equal(a, b)
    assert m.unet is not None and m.cfg.diffusion.default_steps == 2
    assert m.fingerprint == checkpoint.load_model(tiny_model_dir).fingerprint   # same codec
    # a fresh run can start from another model's U-Net (0 steps: exported as it was loaded)
    argv[5] = str(tmp_path / "run2")
    train_diffusion.main(argv + ["--steps", "0", "--init-unet", str(out), "--export", str(tmp_path / "init")])
    for a, b in zip(jax.tree.leaves(m.unet), jax.tree.leaves(checkpoint.load_model(tmp_path / "init").unet)):
        np.testing.assert_array_equal(a, b)
    argv[5] = str(tmp_path / "run3")
    with pytest.raises(SystemExit):       # a U-Net of another architecture
        train_diffusion.main(argv + ["diffusion.time_dim=8", "--init-unet", str(out)])
    assert "--init-unet" in capsys.readouterr().err
    rt = api.Runtime(m)
    assert rt.default_steps == 2
    data = api.compress(coffee[:64, :64], rt, level=2).data
    assert api.decompress(data, rt).shape == (64, 64, 3)


def test_steps_without_a_unet_is_a_clear_error(tiny, coffee):
    data = api.compress(coffee[:64, :64], tiny, level=2).data
    assert tiny.default_steps == 0
    with pytest.raises(ValueError, match="no diffusion decoder"):
        api.decompress(data, tiny, steps=2)
