import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pcdc_jax import api
from pcdc_jax.errors import BudgetError, ImageReadError


def test_decode_equals_model_without_coding(tiny, coffee):
    img = coffee[:96, :160]
    an = tiny.analyze(img)
    for level in (0, 4):
        result = tiny.encode(an, tiny.uniform_levels(an, level))
        c = tiny.parse(result.data)
        symbols, mu = tiny.decode_latent(c)
        np.testing.assert_array_equal(symbols, tiny.selected_symbols(an, result.levels))
        np.testing.assert_array_equal(mu, an.mu)
        np.testing.assert_array_equal(api.decompress(result.data, tiny),
                                      api.reconstruct(an, result.levels, tiny))


@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (65, 129), (1500, 2000)])
def test_arbitrary_sizes_round_trip(tiny, shape):
    rng = np.random.default_rng(0)
    img = (rng.random(shape + (3,)) * 255).astype(np.uint8)
    out = api.decompress(api.compress(img, tiny, level=1).data, tiny)
    assert out.shape == shape + (3,) and out.dtype == np.uint8


def test_padding_blocks_use_the_coarsest_level(tiny, coffee):
    an = tiny.analyze(coffee[:20, :40])      # canvas 64x64: 4x4 blocks, 2x3 overlap the image
    lv = tiny.uniform_levels(an, 3)
    assert lv.shape == (4, 4) and (lv[:2, :3] == 3).all() and lv.sum() == 3 * 6


@given(st.floats(2.0, 400.0))
@settings(max_examples=12, deadline=None)
def test_ratio_budget_is_never_exceeded(tiny, ratio):
    from tests.conftest import sample_image
    img = sample_image()[:64, :96]
    limit = api.budget_bytes(64, 96, ratio=ratio)
    try:
        result = api.compress(img, tiny, ratio=ratio)
    except BudgetError as e:
        assert e.min_bytes > limit
        return
    assert len(result.data) <= limit
    # ... and it is the finest uniform level that fits
    k = int(result.levels.max())
    if k + 1 < tiny.num_levels:
        finer = api.compress(img, tiny, level=k + 1)
        assert len(finer.data) > limit


def test_bpp_budget_and_impossible_budget(tiny, coffee):
    img = coffee[:64, :64]
    r = api.compress(img, tiny, bpp=3.0)
    assert 8 * len(r.data) / (64 * 64) <= 3.0
    with pytest.raises(BudgetError) as e:
        api.compress(img, tiny, ratio=100000)
    assert e.value.max_ratio < 100000 and "coarsest level" in str(e.value)
    n = len(r.data) - 1                                 # a byte budget, as the evaluation uses
    assert len(api.compress(img, tiny, max_bytes=n).data) <= n
    with pytest.raises(ValueError, match="one budget"):
        api.compress(img, tiny, max_bytes=n, bpp=3.0)
    with pytest.raises(ValueError, match="positive"):
        api.compress(img, tiny, max_bytes=0)


def test_bad_arguments(tiny, coffee):
    with pytest.raises(ValueError):
        api.compress(coffee, tiny, level=9)
    with pytest.raises(ValueError):
        api.compress(coffee, tiny, ratio=-1)
    with pytest.raises(ImageReadError):
        api.compress(coffee[..., :2], tiny)
    with pytest.raises(ImageReadError):
        api.compress(coffee.astype(np.float32), tiny)


def test_metadata_round_trips(tiny, coffee):
    from pcdc_jax.codec import bitstream
    data = api.compress(coffee[:32, :32], tiny, level=0, metadata={"GeoKey": [1, 2, 3]}).data
    assert bitstream.unpack(data, max_pixels=10**6).metadata == {"GeoKey": [1, 2, 3]}


def test_estimate_matches_payload_on_real_images(default_runtime):
    """Rate table + z estimate vs the actual coded payload, real images, every level: within 1%."""
    from tests.conftest import sample_image
    for name in ("coffee.png", "astronaut.png"):
        an = default_runtime.analyze(sample_image(name))
        for level in range(default_runtime.num_levels):
            r = default_runtime.encode(an, default_runtime.uniform_levels(an, level))
            assert abs(r.payload_bits - r.estimated_bits) / r.estimated_bits < 0.01, (name, level)


def test_rate_table_agrees_with_each_level(default_runtime):
    """Per block and per level: the table's bits equal the cost of coding that block alone."""
    from tests.conftest import sample_image
    rt = default_runtime
    an = rt.analyze(sample_image()[:128, :128])
    hl, wl = an.inside.shape
    for level in range(rt.num_levels):
        levels = np.full((hl, wl), level, np.uint8)
        sym = rt.selected_symbols(an, levels)
        idx = rt.scale_index(an.t, levels)
        for b in (0, 5, hl * wl - 1):
            i, j = divmod(b, wl)
            coded = 8 * len(rt.coder.encode_y(sym[i:i + 1, j:j + 1], idx[i:i + 1, j:j + 1]))
            # a lone block pays up to one 32-bit word of coder termination
            assert an.rates[b, level] - 1 <= coded <= an.rates[b, level] + 64, (level, b)
        total = sum(8 * len(rt.coder.encode_y(sym[sl], idx[sl]))
                    for sl in [(slice(0, hl), slice(0, wl))])
        assert abs(total - an.rates[:, level].sum()) <= 0.01 * an.rates[:, level].sum() + 64
