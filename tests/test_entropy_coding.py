import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pcdc_jax import config
from pcdc_jax.codec import entropy_coding as ec


@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=300), st.integers(8, 16))
@settings(max_examples=60, deadline=None)
def test_quantize_pmf_is_a_valid_table(pmf, precision):
    if len(pmf) > 2 ** precision // 2:
        return
    pmf = np.asarray(pmf) + 1e-12
    freq = ec.quantize_pmf(pmf, precision)
    assert freq.sum() == 2 ** precision
    assert freq.min() >= 1


@pytest.fixture(scope="module")
def coder(tiny):
    return tiny.coder


def test_gaussian_tables_cover_their_tails():
    cfg = config.tiny().codec
    freq, half = ec.gaussian_tables(cfg)
    assert freq.shape[0] == cfg.num_scales
    for i, h in enumerate(half):
        row = freq[i, :2 * h + 2]
        assert row.sum() == 2 ** cfg.cdf_precision and row.min() >= 1
        assert not freq[i, 2 * h + 2:].any()
    assert np.all(np.diff(half) >= 0)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=15, deadline=None)
def test_y_round_trip_with_escapes(coder, seed):
    rng = np.random.default_rng(seed)
    index = rng.integers(0, 64, (5, 3, 16))
    sigma = 0.11 * np.exp(0.1 * index)
    s = np.round(rng.normal(size=index.shape) * sigma).astype(np.int32)
    n_out = rng.integers(0, 5)
    for _ in range(n_out):  # far outliers need the escape code
        s[tuple(rng.integers(0, d) for d in s.shape)] = rng.choice([-1, 1]) * rng.integers(0, 2**20)
    data = coder.encode_y(s, index)
    np.testing.assert_array_equal(coder.decode_y(data, index), s)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=15, deadline=None)
def test_z_round_trip_with_escapes(coder, seed):
    rng = np.random.default_rng(seed)
    z = rng.integers(-4, 5, (2, 3, coder.z_freq.shape[0])).astype(np.int32)
    z.ravel()[rng.integers(0, z.size)] = rng.choice([-1, 1]) * rng.integers(300, 2**20)
    data = coder.encode_z(z)
    np.testing.assert_array_equal(coder.decode_z(data, z.shape), z)


def test_estimated_bits_match_coded_bits(coder):
    """The ideal cost under the integer tables is what the range coder spends (large stream)."""
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    index = rng.integers(0, 64, (64, 64, 16))
    s = np.round(rng.normal(size=index.shape) * 0.11 * np.exp(0.1 * index)).astype(np.int32)
    s[0, 0, :3] = [5000, -70000, 123456]
    est = float(ec.y_symbol_bits(jnp.asarray(s), jnp.asarray(index), jnp.asarray(coder.y_bits),
                                 jnp.asarray(coder.y_half.astype(np.int32))).sum())
    actual = 8 * len(coder.encode_y(s, index))
    assert abs(actual - est) / est < 0.005, (actual, est)
    z = rng.integers(-3, 4, (32, 32, coder.z_freq.shape[0])).astype(np.int32)
    est_z, actual_z = coder.z_bits_of(z), 8 * len(coder.encode_z(z))
    assert abs(actual_z - est_z) / est_z < 0.01, (actual_z, est_z)


def test_truncated_stream_is_rejected(coder):
    from pcdc_jax.errors import PCDCFormatError
    with pytest.raises(PCDCFormatError):
        coder.decode_y(b"\x00\x01\x02", np.zeros((2, 2, 16), np.int64))
