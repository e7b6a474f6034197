"""The integer hyper decoder: exact on the host and equal to the training path's grids."""
import jax
import jax.numpy as jnp
import numpy as np

from pcdc_jax import parallel
from pcdc_jax.codec.model import Codec
from pcdc_jax.codec.prior import HyperDecoder


def test_integer_path_matches_training_path(tiny):
    cfg = tiny.cfg.codec
    rng = np.random.default_rng(0)
    z = rng.integers(-6, 7, (2, 3, 4, cfg.hyper_channels)).astype(np.int32)
    mu_f, t_f = HyperDecoder(cfg).apply({"params": tiny.params["hyper_decoder"]},
                                        jnp.asarray(z, jnp.float32))
    for b in range(2):
        mu, t = tiny.hyper(z[b])
        # Float32 emulation of the fixed-point grids agrees except for rare ties at rounding.
        assert np.mean(np.asarray(t_f[b]) == t) > 0.99
        assert np.max(np.abs(np.asarray(mu_f[b]) - mu)) <= 2.0 ** -cfg.int_act_bits + 1e-6
        # mu lies on the 2**-act_bits grid, t is integral.
        np.testing.assert_array_equal(mu * 2 ** cfg.int_act_bits, np.round(mu * 2 ** cfg.int_act_bits))


def test_coding_parameters_identical_across_devices_and_batch(tiny):
    """z, mu, t and the scale index of each image do not depend on device count or batch size."""
    assert jax.device_count() == 4
    from tests.conftest import sample_image
    img = sample_image()
    crops = np.stack([img[64 * i:64 * i + 128, 64 * i:64 * i + 128] for i in range(4)])
    x = jnp.asarray(crops.astype(np.float32) / 255.0)
    analysis = jax.jit(lambda p, x: Codec(tiny.cfg.codec).apply(p, x, method=Codec.analysis))
    mesh = parallel.make_mesh(4)
    _, z4 = analysis({"params": tiny.params}, parallel.shard_batch(x, mesh))
    assert len(z4.sharding.device_set) == 4
    levels = np.full((8, 8), 2, np.uint8)
    for i in range(4):
        _, z1 = analysis({"params": tiny.params}, x[i:i + 1])
        zs1 = np.round(np.asarray(z1[0])).astype(np.int32)
        zs4 = np.round(np.asarray(z4[i])).astype(np.int32)
        np.testing.assert_array_equal(zs1, zs4)
        mu1, t1 = tiny.hyper(zs1)
        mu4, t4 = tiny.hyper(zs4)
        np.testing.assert_array_equal(mu1, mu4)
        np.testing.assert_array_equal(tiny.scale_index(t1, levels), tiny.scale_index(t4, levels))
        # and the same image through the public API (one device, batch 1)
        an = tiny.analyze(crops[i])
        np.testing.assert_array_equal(an.z_symbols, zs1)
        np.testing.assert_array_equal(an.t, t1)
