"""Non-learned level allocations under a bit budget: the baselines the PPO policy is compared with.

An image is N blocks (16x16 pixels, raster order), each coded at one of K levels (0 = coarsest).
Every allocator reads the exact table `rates` float [N, K] (bits of block b at level k, from
`rates.symbols_and_rates`), a mask `inside` bool [N] (blocks outside the image are padding and
always get level 0) and a budget in bits, and returns levels uint8 [N] with
`total_bits(rates, levels) <= budget`. A budget below `coarsest_cost` raises ValueError.

- `uniform`: one level for every inside block (CDC's allocation).
- `hf`: levels from the block's high-frequency energy, offset found by bisection, then `fill`.
- `greedy`: Lagrangian allocation on a distortion table (e.g. `distortion_proxy`), then `fill`.

Everything is vectorized over blocks; the only Python loops run over levels, bisection steps or
fill rounds. Arithmetic is float64 whatever the input dtype, and every feasibility decision uses
`total_bits`, so a returned allocation fits by the same sum the caller can recompute.
"""
from __future__ import annotations

import numpy as np

_BISECTION_STEPS = 60


def total_bits(rates: np.ndarray, levels: np.ndarray) -> float:
    """Total bits of an allocation: sum_b rates[b, levels[b]].

    rates float [N, K] (bits); levels int [N]. Returns a float64 (bits).
    """
    rates = np.asarray(rates, np.float64)
    picked = np.take_along_axis(rates, np.asarray(levels, np.intp)[:, None], axis=1)
    return float(picked.sum())


def coarsest_cost(rates: np.ndarray, inside: np.ndarray) -> float:
    """Bits with every block at level 0, the least any allocation may spend.

    rates float [N, K] (bits); inside bool [N] (accepted for a uniform signature: padding blocks
    are coded at level 0 too, so they count). Returns bits.
    """
    rates, _ = _validate(rates, inside)
    return total_bits(rates, np.zeros(rates.shape[0], np.intp))


def uniform(rates: np.ndarray, inside: np.ndarray, budget: float) -> np.ndarray:
    """CDC's allocation: the finest single level whose total fits, for every inside block.

    rates float [N, K] (bits); inside bool [N]; budget (bits). Returns levels uint8 [N], outside
    blocks at 0. Every k is tried, so rates that are not increasing in k are handled.
    """
    rates, inside = _validate(rates, inside)
    _check_budget(rates, budget)
    best = np.zeros(rates.shape[0], np.intp)
    for k in range(1, rates.shape[1]):
        levels = np.where(inside, k, 0)
        if total_bits(rates, levels) <= budget:
            best = levels
    return _finish(rates, best, budget)


def hf(rates: np.ndarray, inside: np.ndarray, budget: float, energy: np.ndarray,
       spread: float = 1.0, *, eps: float = 1e-12, level_steps: np.ndarray | None = None,
       fill: bool = True) -> np.ndarray:
    """High-frequency-energy heuristic: blocks with more detail get finer levels.

    rates float [N, K] (bits); inside bool [N]; budget (bits); energy float [N] >= 0 (mean squared
    high-pass residual of each block); spread: levels per standard deviation of log-energy.
    With s the log(energy + eps) standardized over inside blocks (0 if constant),
    level_b = clip(round(c + spread * s_b), 0, K - 1), c the largest offset (bisection) whose
    total fits; then `fill` spends the leftover bits. Before the fill, higher energy never gets a
    coarser level (round and clip are non-decreasing).

    The fill uses the distortion proxy dist[b, k] = (energy_b + eps) * step_k**2: the squared error
    of a step-step_k quantizer scales with step**2, weighted by the block's detail. level_steps
    float [K] are the quantizer steps (`CodecConfig.level_steps()`); by default step_k = 2**-k.
    fill=False returns the allocation before the fill. Returns levels uint8 [N].
    """
    rates, inside = _validate(rates, inside)
    energy = np.asarray(energy, np.float64)
    if energy.shape != inside.shape or not np.all(np.isfinite(energy)) or np.any(energy < 0):
        raise ValueError(f"energy must be finite, >= 0 and of shape {inside.shape}, "
                         f"got shape {energy.shape}")
    _check_budget(rates, budget)
    num_levels = rates.shape[1]

    log_e = np.log(energy + eps)
    s = np.zeros_like(log_e)
    if inside.any():
        std = log_e[inside].std()
        if std > 1e-12 * (1.0 + np.abs(log_e[inside]).max()):
            s = (log_e - log_e[inside].mean()) / std

    def levels_at(c):
        return np.where(inside, np.clip(np.floor(c + spread * s + 0.5), 0, num_levels - 1), 0
                        ).astype(np.intp)

    # At c = lo every level is 0 (fits, budget >= coarsest); at c = hi every inside level is K-1.
    reach = num_levels + abs(spread) * float(np.abs(s).max(initial=0.0)) + 1.0
    lo, hi = -reach, reach
    if total_bits(rates, levels_at(hi)) <= budget:
        lo = hi
    else:
        # Invariant: levels_at(lo) fits. Rates that are not increasing in k may make the total
        # non-monotone in c; the bisection then finds some fitting c, never an infeasible one.
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if total_bits(rates, levels_at(mid)) <= budget:
                lo = mid
            else:
                hi = mid
    levels = levels_at(lo)
    if fill:
        steps = (2.0 ** -np.arange(num_levels) if level_steps is None
                 else np.asarray(level_steps, np.float64))
        if steps.shape != (num_levels,):
            raise ValueError(f"level_steps must have shape ({num_levels},), got {steps.shape}")
        dist = (energy + eps)[:, None] * steps[None, :] ** 2
        levels = _fill(rates, dist, inside, levels, budget)
    return _finish(rates, levels, budget)


def greedy(rates: np.ndarray, dist: np.ndarray, inside: np.ndarray, budget: float) -> np.ndarray:
    """Greedy Lagrangian allocation minimizing total distortion under the budget.

    rates float [N, K] (bits); dist float [N, K] (distortion of block b at level k, any unit,
    usually decreasing in k, e.g. `distortion_proxy`); inside bool [N]; budget (bits).
    Each inside block takes argmin_k dist + lam * rates for the smallest lam >= 0 whose total fits
    (lam = 0 first, then bisection in log lam), and `fill` spends the leftover bits on the best
    distortion drop per extra bit. Knapsack greedy can strand bits (a cheap, steep upgrade taken
    first leaves too little for a large one), so the same fill is also run from the uniform
    allocation and from all-zero, and the allocation with the least total distortion is returned;
    this makes greedy never worse than `uniform` on the same distortion. Returns levels uint8 [N].
    """
    rates, inside = _validate(rates, inside)
    dist = np.asarray(dist, np.float64)
    if dist.shape != rates.shape or not np.all(np.isfinite(dist)):
        raise ValueError(f"dist must be finite with the shape of rates {rates.shape}, "
                         f"got {dist.shape}")
    _check_budget(rates, budget)

    def levels_at(lam):
        return np.where(inside, np.argmin(dist + lam * rates, axis=1), 0)

    levels = levels_at(0.0)
    if total_bits(rates, levels) > budget:
        levels = levels_at(_smallest_fitting_lambda(rates, dist, budget, levels_at))
        if total_bits(rates, levels) > budget:
            levels = np.zeros_like(levels)
    candidates = [_fill(rates, dist, inside, start, budget)
                  for start in (levels, uniform(rates, inside, budget).astype(np.intp),
                                np.zeros_like(levels))]
    totals = [total_bits(dist, c) for c in candidates]
    return _finish(rates, candidates[int(np.argmin(totals))], budget)


def distortion_proxy(y: np.ndarray, mu: np.ndarray, symbols: np.ndarray,
                     level_steps: np.ndarray) -> np.ndarray:
    """Latent-domain squared quantization error of every block at every level.

    y, mu float [h, w, M] (latent and its predicted mean); symbols int [K, h, w, M] (symbols of
    every block at every level, `rates.symbols_and_rates`); level_steps float [K]
    (`CodecConfig.level_steps()`). Returns D float64 [h * w, K] with
    D[i * w + j, k] = sum_c (y - (mu + level_steps[k] * symbols[k]))[i, j, c] ** 2.
    """
    y = np.asarray(y, np.float64)
    mu = np.asarray(mu, np.float64)
    symbols = np.asarray(symbols)
    level_steps = np.asarray(level_steps, np.float64)
    num_levels = level_steps.shape[0]
    if y.ndim != 3 or mu.shape != y.shape or symbols.shape != (num_levels, *y.shape):
        raise ValueError(f"expected y, mu [h, w, M] and symbols [K, h, w, M] with K = "
                         f"{num_levels}; got {y.shape}, {mu.shape}, {symbols.shape}")
    h, w, _ = y.shape
    residual = y - mu
    # One level at a time keeps memory at one [h, w, M] temporary.
    out = np.empty((h * w, num_levels), np.float64)
    for k in range(num_levels):
        err = residual - level_steps[k] * symbols[k].astype(np.float64)
        out[:, k] = np.sum(err * err, axis=-1).reshape(h * w)
    return out


def _validate(rates, inside):
    rates = np.asarray(rates, np.float64)
    inside = np.asarray(inside, bool)
    if rates.ndim != 2 or rates.shape[1] < 1 or inside.shape != rates.shape[:1]:
        raise ValueError(f"expected rates [N, K] and inside [N]; got {rates.shape}, {inside.shape}")
    if rates.shape[1] > 256:
        raise ValueError(f"at most 256 levels fit in uint8, got K = {rates.shape[1]}")
    if not np.all(np.isfinite(rates)):
        raise ValueError("rates must be finite")
    return rates, inside


def _check_budget(rates, budget):
    budget = float(budget)
    least = total_bits(rates, np.zeros(rates.shape[0], np.intp))
    if not budget >= least:                      # also rejects NaN
        raise ValueError(f"budget of {budget:.1f} bits is below the coarsest cost of {least:.1f} "
                         f"bits (every block at level 0); no allocation can meet it")


def _finish(rates, levels, budget):
    """Explicit guard: all-zero is feasible (budget >= coarsest cost), so never return more."""
    if total_bits(rates, levels) > budget:
        levels = np.zeros_like(levels)
    return np.asarray(levels).astype(np.uint8)


def _smallest_fitting_lambda(rates, dist, budget, levels_at):
    """Smallest lam (to bisection precision) whose Lagrangian allocation fits; lam = 0 does not.

    The Lagrangian allocation's total is non-increasing in lam, and as lam grows each block moves
    to its cheapest level, whose total is at most the coarsest cost, so a fitting lam exists.
    """
    def fits(lam):
        return total_bits(rates, levels_at(lam)) <= budget

    # Start near the ratio of distortion range to rate range, where the trade-off happens.
    d_range = float(np.ptp(dist, axis=1).max(initial=0.0))
    r_range = float(np.ptp(rates, axis=1).max(initial=0.0))
    hi = max(d_range, 1e-300) / max(r_range, 1e-300)
    lo = hi
    if fits(hi):
        while fits(lo) and lo > 1e-300:
            hi, lo = lo, lo / 16.0
    else:
        while not fits(hi):
            if hi > 1e300:                       # cannot happen with finite tables; the
                return hi                        # caller checks the result fits anyway
            lo, hi = hi, hi * 16.0
    for _ in range(_BISECTION_STEPS):
        mid = np.sqrt(lo * hi)                   # bisection in log lam
        if not lo < mid < hi:
            break
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _fill(rates, dist, inside, levels, budget):
    """Spend leftover bits on upgrades, best distortion drop per extra bit first.

    rates, dist float [N, K]; levels int [N] (fits the budget). Each round, every inside block
    proposes its best move to a level with lower distortion whose extra bits fit the leftover:
    a move that costs no bits if it has one (largest drop), else the largest drop per extra bit.
    Proposals are sorted by that ratio and the longest prefix whose cumulative cost fits is taken.
    Rounds repeat until nothing fits (each round strictly lowers the total distortion or ends).
    """
    levels = np.asarray(levels, np.intp).copy()
    num_blocks, num_levels = rates.shape
    rows = np.arange(num_blocks)
    for _ in range(4 * num_levels + 8):
        leftover = budget - total_bits(rates, levels)
        extra = rates - rates[rows, levels][:, None]          # [N, K] extra bits of each move
        drop = dist[rows, levels][:, None] - dist             # [N, K] distortion decrease
        valid = inside[:, None] & (drop > 0) & (extra <= leftover)
        free = valid & (extra <= 0)
        has_free = free.any(axis=1)
        ratio = np.where(valid & (extra > 0), drop / np.where(extra > 0, extra, 1.0), -np.inf)
        target = np.where(has_free, np.argmax(np.where(free, drop, -np.inf), axis=1),
                          np.argmax(ratio, axis=1))
        movers = np.flatnonzero(valid.any(axis=1))
        if movers.size == 0:
            break
        score = np.where(has_free[movers], np.inf, ratio[movers, target[movers]])
        order = movers[np.argsort(-score, kind="stable")]
        cost = np.cumsum(extra[order, target[order]])
        over = np.flatnonzero(cost > leftover)
        take = order[:over[0]] if over.size else order
        if take.size == 0:
            break
        trial = levels.copy()
        trial[take] = target[take]
        if total_bits(rates, trial) > budget:                 # float rounding at the boundary
            break
        levels = trial
    return levels
