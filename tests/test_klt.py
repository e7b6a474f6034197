"""The KLT start of a full-rank latent, the frozen-transform warm-up and the linear paths' rate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcdc_jax import config, training
from pcdc_jax.codec import klt
from pcdc_jax.codec.decoder import stage_halos
from pcdc_jax.codec.model import Codec
from pcdc_jax.codec.prior import gaussian_likelihood, scale_index, sigma_from_index, sigma_straight_through
from pcdc_jax.codec.quantize import dequantize, noisy_symbols, quantize, ste_dequantize
from tests.conftest import perturbed, sample_image


def _crops(n=60, side=64, seed=0):
    """n random side x side crops of the sample photographs, in [0, 1]."""
    rng = np.random.default_rng(seed)
    images = [sample_image(), sample_image("astronaut.png")]
    out = []
    for i in range(n):
        im = images[i % 2]
        y, x = rng.integers(0, im.shape[0] - side), rng.integers(0, im.shape[1] - side)
        out.append(im[y:y + side, x:x + side])
    return np.stack(out).astype(np.float32) / 255


def test_block_klt_is_orthonormal_and_ordered_by_variance():
    crops = _crops()
    mean, basis, variance = klt.block_klt(crops)
    assert basis.shape == (768, 768)
    np.testing.assert_allclose(basis.T @ basis, np.eye(768), atol=1e-9)
    blocks = crops.reshape(-1, 4, 16, 4, 16, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 768)
    np.testing.assert_array_equal(klt.to_blocks(crops), blocks)
    np.testing.assert_array_equal(klt.from_blocks(klt.to_blocks(crops[0]), 64, 64), crops[0])
    np.testing.assert_allclose(mean, blocks.mean(0), atol=1e-6)
    var = ((blocks - mean) @ basis).var(0)
    assert (np.diff(var) <= 1e-9).all() and var[0] > 100 * var[100]
    np.testing.assert_allclose(var, variance, rtol=0.01, atol=1e-12)
    with pytest.raises(ValueError, match="too few"):
        klt.block_klt(crops[:5])
    with pytest.raises(ValueError, match="multiples of 16"):
        klt.block_klt(crops[:, :40])


def _full_rank_tiny():
    return config.tiny().override(["codec.latent_channels=768", "train.diffusion_weight=0"])


def test_a_klt_start_is_a_transform_coder():
    """A 768-channel codec started at the KLT reconstructs unquantized latents exactly, and at a
    level its error is that of uniformly quantized KLT coefficients; the convolutional paths and
    the predicted mean start at zero."""
    cfg = _full_rank_tiny()
    crops = _crops()
    step = 10 / 255
    params = klt.init_linear_paths(jax.device_get(training.init_params_codec(cfg, jax.random.PRNGKey(0))),
                                   cfg.codec, klt.block_klt(crops), step)
    model = Codec(cfg.codec)
    x = jnp.asarray(crops[:4])
    y, z = model.apply({"params": params}, x, method="analysis")
    levels = jnp.full(y.shape[:3], 2, jnp.int32)
    x_rec, _ = model.apply({"params": params}, y, levels, method="synthesis")
    np.testing.assert_allclose(x_rec, x, atol=2e-5)
    mu, t = model.apply({"params": params}, jnp.round(z), method="hyper")
    assert float(jnp.abs(mu).max()) == 0.0
    # the scale index of every channel is that of its standard deviation (a static start)
    sigma = np.asarray(sigma_from_index(scale_index(t, levels, cfg.codec), cfg.codec))[0, 0, 0]
    std = np.asarray(y).reshape(-1, 768).std(0)
    big = std > 1.0
    assert big.sum() > 10 and np.median(np.abs(np.log(sigma[big] / std[big]))) < 0.5
    out = model.apply({"params": params}, x, levels, jax.random.PRNGKey(1))
    # orthonormal transform: pixel error energy == coefficient error energy (step 1 in y = `step`)
    err = float(jnp.sum((out["x_base"] - x) ** 2))
    q_err = float(jnp.sum((jnp.round(y) - y) ** 2)) * step ** 2
    assert err == pytest.approx(q_err, rel=1e-3)
    with pytest.raises(ValueError, match="exceed"):
        klt.init_linear_paths(params, config.CodecConfig(latent_channels=800), klt.block_klt(crops), step)


def test_frozen_transforms_and_learning_rate_factors():
    cfg = _full_rank_tiny().override(["train.transform_freeze_steps=2", "train.linear_lr_scale=0.0",
                                      "train.lr_warmup_steps=1"])
    state = training.init_state(cfg, jax.random.PRNGKey(0))
    state = state._replace(params=perturbed(state.params))
    step = training.jit_train_step(cfg)
    x = jnp.asarray(_crops(2))

    def moved(a, b):
        return jax.tree.map(lambda u, v: bool(np.any(np.asarray(u) != np.asarray(v))), a, b)

    state, _ = step(state, x, jax.random.PRNGKey(0))     # step 0: learning rate 0 (warm-up)
    before = jax.device_get(state.params["codec"])
    state, _ = step(state, x, jax.random.PRNGKey(1))     # step 1: only the entropy model learns
    first = jax.device_get(state.params["codec"])
    m = moved(before, first)
    assert not any(jax.tree.leaves(m["encoder"])) and not any(jax.tree.leaves(m["decoder"]))
    assert all(jax.tree.leaves(m["hyper_decoder"])) and all(jax.tree.leaves(m["hyper_encoder"]))
    state, _ = step(state, x, jax.random.PRNGKey(2))     # step 2: the transforms learn, but not
    m = moved(first, jax.device_get(state.params["codec"]))    # their linear paths (scale 0)
    assert all(jax.tree.leaves(m["encoder"]["down_out"])) and all(jax.tree.leaves(m["decoder"]["up_out"]))
    assert not any(jax.tree.leaves(m["encoder"]["block_linear"]))
    assert not any(jax.tree.leaves(m["decoder"]["block_linear"]))

    cfg = cfg.override(["train.transform_freeze_steps=0", "train.entropy_lr_scale=0.0"])
    state = training.init_state(cfg, jax.random.PRNGKey(0))
    state = state._replace(params=perturbed(state.params))
    step = training.jit_train_step(cfg)
    state, _ = step(state, x, jax.random.PRNGKey(0))
    before = jax.device_get(state.params["codec"])
    state, _ = step(state, x, jax.random.PRNGKey(1))
    m = moved(before, jax.device_get(state.params["codec"]))
    assert all(jax.tree.leaves(m["decoder"]["up_out"]))
    assert not any(jax.tree.leaves(m["hyper_decoder"])) and not any(jax.tree.leaves(m["z_prior"]))


@pytest.mark.parametrize("kernel", [1, 3])
def test_stage_halos_cover_the_context_decoder_receptive_field(kernel):
    """Changing one latent position changes no output pixel more than stage_halos[0] blocks away."""
    cfg = config.tiny().override([f"codec.latent_kernel={kernel}", "codec.decoder_res_blocks=1"])
    params = perturbed(training.init_params_codec(cfg, jax.random.PRNGKey(0)))
    model = Codec(cfg.codec)
    n, c = 15, cfg.codec.latent_channels
    y = jax.random.normal(jax.random.PRNGKey(1), (1, n, n, c))
    levels = jnp.zeros((1, n, n), jnp.int32)
    base, _ = model.apply({"params": params}, y, levels, method="synthesis")
    moved, _ = model.apply({"params": params}, y.at[0, 7, 7].add(5.0), levels, method="synthesis")
    changed = np.argwhere(np.abs(np.asarray(moved - base))[0].max(-1) > 0) // 16
    reach = int(np.abs(changed - 7).max())
    assert stage_halos(cfg.codec)[0] >= reach >= 1


def test_training_dequantization_value_and_gradients():
    """The decoder's training input is the coded reconstruction; its gradient is 1 in y
    (straight-through) and 1 in mu (the grid moves with the mean)."""
    cfg = config.tiny().codec
    y = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 3, 16)) * 3
    mu = jax.random.normal(jax.random.PRNGKey(1), y.shape)
    levels = jnp.array([[[0, 1, 2], [3, 4, 0], [1, 2, 3]]])
    np.testing.assert_allclose(ste_dequantize(y, mu, levels, cfg),
                               dequantize(quantize(y, mu, levels, cfg), mu, levels, cfg), atol=1e-5)
    gy, gmu = jax.grad(lambda a, b: jnp.sum(ste_dequantize(a, b, levels, cfg)), argnums=(0, 1))(y, mu)
    np.testing.assert_array_equal(gy, 1.0)
    np.testing.assert_array_equal(gmu, 1.0)


def test_the_hyper_start_follows_local_activity():
    """With the local-activity start, z carries each band's ln-scale deviation and the hyper decoder
    adds it to the scale indices (z_g / (z_gain * delta) of them), so the real coded rate of the
    latent falls below that of the static start on the crops, for little z."""
    cfg = _full_rank_tiny().override(["codec.hyper_channels=12"])
    cc = cfg.codec
    crops = _crops(n=80, side=128)
    step = 10 / 255
    k = klt.block_klt(crops)
    static = klt.init_linear_paths(jax.device_get(training.init_params_codec(cfg, jax.random.PRNGKey(0))),
                                   cc, k, step)
    params = klt.init_hyper_paths(static, cc, k, step, crops)
    model = Codec(cc)
    x = jnp.asarray(crops[:40])       # 160 z positions
    y, z = model.apply({"params": params}, x, method="analysis")
    bands = len(klt.activity_groups(768, min(16, cc.hyper_hidden // 2, cc.hyper_channels))) - 1
    assert bands == 8
    z_hat = jnp.round(z)
    assert float(z_hat[..., :bands].std()) > 1.0 and float(jnp.abs(z[..., bands:]).max()) == 0.0
    mu, t = model.apply({"params": params}, z_hat, method="hyper")
    _, t0 = model.apply({"params": params}, jnp.zeros_like(z_hat), method="hyper")
    assert float(jnp.abs(mu).max()) == 0.0
    edges = klt.activity_groups(768, bands)
    shift = np.repeat(np.repeat(np.asarray(z_hat), 4, 1), 4, 2)[..., np.repeat(np.arange(bands), np.diff(edges))]
    np.testing.assert_allclose(np.asarray(t - t0), shift / (4.0 * cc.scale_log_delta), atol=0.5)

    def coded_bits(p, z_hat):
        levels = jnp.full(y.shape[:3], 2, jnp.int32)
        mu, t = model.apply({"params": p}, z_hat, method="hyper")
        sigma = sigma_from_index(scale_index(t, levels, cc), cc)
        p = gaussian_likelihood(quantize(y, mu, levels, cc), sigma)
        return float(-jnp.log2(jnp.maximum(p, cc.likelihood_bound)).sum())

    # in training, `rounded_z` gives the hyper decoder the rounded z coding gives it
    lv = jnp.full(y.shape[:3], 2, jnp.int32)
    key = jax.random.PRNGKey(3)
    out = model.apply({"params": params}, x, lv, key, rounded_z=True)
    v = noisy_symbols(y, mu, lv, jax.random.split(key)[1], cc)
    sigma = sigma_from_index(scale_index(t, lv, cc), cc)
    expect = -jnp.log2(jnp.maximum(gaussian_likelihood(v, sigma), cc.likelihood_bound)).sum(-1)
    np.testing.assert_allclose(out["bits_y"], expect, rtol=1e-5)
    assert not np.allclose(model.apply({"params": params}, x, lv, key)["bits_y"], expect, rtol=1e-3)

    _, z_static = model.apply({"params": static}, x, method="analysis")
    assert coded_bits(params, z_hat) < 0.94 * coded_bits(static, jnp.round(z_static))
    with pytest.raises(ValueError, match="hyper_log_input"):
        klt.init_hyper_paths(static, config.CodecConfig(latent_channels=768), k, step, crops)
    with pytest.raises(ValueError, match="64x64"):
        klt.init_hyper_paths(static, cc, k, step, crops[:, :48, :48])


def test_the_scale_gradient_stops_at_the_ends_of_the_table():
    """Inside the scale table d sigma / d t = delta * sigma; beyond either end the coded rate does
    not move with t, and neither does the training gradient."""
    cc = config.tiny().codec
    levels = jnp.array([2, 2, 2, 0])
    e = cc.level_exponents[2]
    t = jnp.array([[e + 3.0], [e + cc.num_scales + 5.0], [e - 4.0], [cc.level_exponents[0] + 1.0]])
    sigma = sigma_straight_through(t, levels, cc)
    np.testing.assert_allclose(sigma, sigma_from_index(scale_index(t, levels, cc), cc))
    grad = jax.vmap(jax.grad(lambda t, lv: sigma_straight_through(t, lv, cc).sum()))(t, levels)
    np.testing.assert_allclose(grad[:, 0], [cc.scale_log_delta * float(sigma[0, 0]), 0.0, 0.0,
                                            cc.scale_log_delta * float(sigma[3, 0])], rtol=1e-6)
