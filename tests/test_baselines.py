"""Baseline allocations: budget never exceeded, padding at level 0, near-optimal greedy."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from pcdc_jax.allocation import baselines as bl

K = 5
ALLOCATORS = ("uniform", "hf", "greedy")


def _allocate(name, rates, inside, budget, energy, dist):
    if name == "uniform":
        return bl.uniform(rates, inside, budget)
    if name == "hf":
        return bl.hf(rates, inside, budget, energy)
    return bl.greedy(rates, dist, inside, budget)


@st.composite
def problems(draw, increasing=True, max_blocks=64, integer=False):
    """(rates [N, K], inside [N], budget, energy [N], dist [N, K]); budget in
    [coarsest_cost, finest total], the two ends drawn on purpose."""
    n = draw(st.integers(1, max_blocks))
    if integer:
        cells = hnp.arrays(np.int64, (n, K), elements=st.integers(1, 12)).map(
            lambda a: a.astype(np.float64))
    else:
        cells = hnp.arrays(np.float64, (n, K), elements=st.floats(0.5, 500.0))
    rates = draw(cells)
    if increasing:
        rates = np.cumsum(rates, axis=1)
    inside = draw(hnp.arrays(bool, n))
    energy = draw(hnp.arrays(np.float64, n, elements=st.floats(0.0, 10.0)))
    # Convex decreasing distortion: positive drops, largest first.
    drops = -np.sort(-draw(hnp.arrays(np.float64, (n, K - 1), elements=st.floats(0.01, 10.0))), axis=1)
    floor = draw(hnp.arrays(np.float64, (n, 1), elements=st.floats(0.0, 10.0)))
    dist = floor + np.concatenate([np.cumsum(drops[:, ::-1], axis=1)[:, ::-1], np.zeros((n, 1))], axis=1)
    if not increasing:                              # arbitrary rates, arbitrary distortion
        dist = draw(hnp.arrays(np.float64, (n, K), elements=st.floats(0.0, 100.0)))
    lo = bl.coarsest_cost(rates, inside)
    hi = max(lo, bl.total_bits(rates, np.where(inside, K - 1, 0)))
    where = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    budget = hi if where == 1.0 else lo + where * (hi - lo)
    if integer:
        budget = max(lo, float(np.floor(budget)))
    return rates, inside, min(max(budget, lo), hi), energy, dist


def _check_allocation(levels, rates, inside, budget):
    assert levels.dtype == np.uint8 and levels.shape == inside.shape
    assert np.all(levels < K)
    assert np.all(levels[~inside] == 0)
    assert bl.total_bits(rates, levels) <= budget


@settings(max_examples=120, deadline=None)
@given(st.booleans().flatmap(lambda increasing: problems(increasing=increasing)))
def test_allocations_fit_budget_increasing_or_arbitrary_rates(problem):
    rates, inside, budget, energy, dist = problem
    for name in ALLOCATORS:
        _check_allocation(_allocate(name, rates, inside, budget, energy, dist), rates, inside, budget)


@settings(max_examples=30, deadline=None)
@given(problems(increasing=True, max_blocks=16))
def test_budget_at_the_ends(problem):
    rates, inside, _, energy, dist = problem
    lo = bl.coarsest_cost(rates, inside)
    for name in ALLOCATORS:
        assert np.all(_allocate(name, rates, inside, lo, energy, dist) == 0)
    hi = bl.total_bits(rates, np.where(inside, K - 1, 0))
    finest = np.where(inside, K - 1, 0)
    for name in ALLOCATORS:      # increasing rates, strictly decreasing dist: finest is the best
        assert np.array_equal(_allocate(name, rates, inside, hi, energy, dist), finest)


@settings(max_examples=30, deadline=None)
@given(problems(increasing=False, max_blocks=16))
def test_budget_below_coarsest_cost_raises(problem):
    rates, inside, _, energy, dist = problem
    below = np.nextafter(bl.coarsest_cost(rates, inside), -np.inf)
    for name in ALLOCATORS:
        with pytest.raises(ValueError, match="coarsest cost"):
            _allocate(name, rates, inside, below, energy, dist)


@settings(max_examples=60, deadline=None)
@given(problems(increasing=False))
def test_uniform_is_the_finest_single_level_that_fits(problem):
    rates, inside, budget, _, _ = problem
    fitting = [k for k in range(K) if bl.total_bits(rates, np.where(inside, k, 0)) <= budget]
    expected = np.where(inside, max(fitting), 0)
    assert np.array_equal(bl.uniform(rates, inside, budget), expected)


def _optimum(rates, dist, inside, budget):
    """Exact multiple-choice knapsack by dynamic programming over integer bits (min distortion)."""
    cap = int(np.floor(budget))
    best = np.zeros(cap + 1)                       # best[c]: least distortion within c bits
    for b in range(rates.shape[0]):
        new = np.full(cap + 1, np.inf)
        for k in (range(K) if inside[b] else [0]):
            r = int(rates[b, k])
            if r <= cap:
                new[r:] = np.minimum(new[r:], best[:cap + 1 - r] + dist[b, k])
        best = new
    return best[cap]


@settings(max_examples=150, deadline=None)
@given(problems(increasing=True, max_blocks=8, integer=True))
def test_greedy_is_near_optimal_on_small_convex_problems(problem):
    """Greedy is within 10% of the optimum, or within one block's largest single-level distortion
    step: on a handful of blocks the knapsack integrality gap (bits stranded because the next
    upgrade does not fit) can be most of the total distortion when the finest levels reach ~0,
    and that gap is bounded by one upgrade, not by a fraction. With hundreds of blocks the same
    gap is a tiny fraction (test below)."""
    rates, inside, budget, _, dist = problem
    opt = _optimum(rates, dist, inside, budget)
    d_greedy = bl.total_bits(dist, bl.greedy(rates, dist, inside, budget))
    d_uniform = bl.total_bits(dist, bl.uniform(rates, inside, budget))
    assert d_greedy >= opt - 1e-9                  # the DP is exact
    step = float(np.max(-np.diff(dist, axis=1)[inside], initial=0.0))
    assert d_greedy <= opt + max(0.10 * opt, step) + 1e-9
    assert d_greedy <= d_uniform + 1e-9


def test_greedy_is_near_optimal_with_many_blocks():
    rng = np.random.default_rng(0)
    n = 300
    rates = np.cumsum(rng.integers(5, 60, size=(n, K)), axis=1).astype(np.float64)
    dist = rng.lognormal(0, 1.5, size=(n, 1)) * np.exp(-np.arange(K) * rng.uniform(0.7, 1.3, (n, 1)))
    inside = rng.random(n) < 0.9
    lo, hi = bl.coarsest_cost(rates, inside), bl.total_bits(rates, np.where(inside, K - 1, 0))
    for frac in (0.1, 0.4, 0.8):
        budget = float(np.floor(lo + frac * (hi - lo)))
        opt = _optimum(rates, dist, inside, budget)
        d_greedy = bl.total_bits(dist, bl.greedy(rates, dist, inside, budget))
        assert opt <= d_greedy <= 1.002 * opt
        assert d_greedy < bl.total_bits(dist, bl.uniform(rates, inside, budget))


def test_greedy_not_worse_than_uniform_where_lagrangian_strands_bits():
    """Block A's steep second upgrade (31 bits, 40/bit) is bought before B's first (50 bits, 38/bit),
    stranding 20 bits: Lagrangian + fill alone would end at A=2, B=0 (distortion 3700), worse than
    uniform level 1 (3000, also the optimum). greedy's restarts from uniform and zero recover it."""
    rates = np.array([[0.0, 1.0, 32.0], [0.0, 50.0, 100.0]])
    dist = np.array([[3000.0, 2900.0, 1660.0], [2000.0, 100.0, 50.0]])
    inside = np.ones(2, bool)
    lagrangian = np.array([2, 0])
    assert bl.total_bits(rates, lagrangian) <= 51 and bl.total_bits(dist, lagrangian) > 3000
    assert np.array_equal(bl.uniform(rates, inside, 51.0), [1, 1])
    assert np.array_equal(bl.greedy(rates, dist, inside, 51.0), [1, 1])


@settings(max_examples=60, deadline=None)
@given(problems(increasing=True), st.floats(0.2, 3.0))
def test_hf_gives_finer_levels_to_higher_energy_before_fill(problem, spread):
    rates, inside, budget, energy, _ = problem
    levels = bl.hf(rates, inside, budget, energy, spread, fill=False)
    _check_allocation(levels, rates, inside, budget)
    e, lv = energy[inside], levels[inside].astype(int)
    higher = e[:, None] > e[None, :]
    assert np.all((lv[:, None] >= lv[None, :])[higher])
    filled = bl.hf(rates, inside, budget, energy, spread)
    assert np.all(filled >= levels)           # fill moves only to lower proxy distortion = finer


def test_hf_spends_more_of_the_budget_than_uniform():
    n = 16
    rates = np.tile(np.array([10.0, 20.0, 40.0, 80.0, 160.0]), (n, 1))
    inside = np.ones(n, bool)
    energy = np.geomspace(1e-3, 1.0, n)
    budget = 16 * 40.0 + 7 * 40.0 + 5.0                  # level 2 everywhere, 7 blocks' upgrades left
    u, h = bl.uniform(rates, inside, budget), bl.hf(rates, inside, budget, energy)
    assert np.all(u == 2)
    assert bl.total_bits(rates, u) < bl.total_bits(rates, h) <= budget
    assert bl.total_bits(rates, h) > budget - 40.0       # less than one upgrade left over
    assert h[-1] >= h[0]                                  # the detailed block is not the coarser


def test_hf_constant_energy_is_uniform_then_filled():
    rates = np.tile(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), (6, 1))
    inside = np.array([True] * 5 + [False])
    budget = 14.0                            # level 1 inside costs 11; 3 bits buy 3 upgrades
    levels = bl.hf(rates, inside, budget, np.zeros(6), fill=False)
    assert np.array_equal(levels, [1, 1, 1, 1, 1, 0])
    assert bl.total_bits(rates, bl.hf(rates, inside, budget, np.zeros(6))) == budget


def test_distortion_proxy_matches_a_loop():
    rng = np.random.default_rng(1)
    h, w, m = 2, 3, 4
    y, mu = rng.normal(size=(h, w, m)), rng.normal(size=(h, w, m))
    steps = np.exp(0.5 * np.arange(2, -3, -1))
    symbols = np.round((y - mu)[None] / steps[:, None, None, None]).astype(np.int32)
    d = bl.distortion_proxy(y, mu, symbols, steps)
    assert d.shape == (h * w, K)
    for i in range(h):
        for j in range(w):
            for k in range(K):
                err = sum((y[i, j, c] - (mu[i, j, c] + steps[k] * symbols[k, i, j, c])) ** 2
                          for c in range(m))
                assert d[i * w + j, k] == pytest.approx(err, rel=1e-12)
    assert np.all(np.diff(d.sum(axis=0)) < 0)             # finer steps, smaller total error
