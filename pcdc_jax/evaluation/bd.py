"""Bjontegaard deltas between rate-distortion curves, and the rate a curve needs for a quality.

`bd_rate(anchor, test)`: the average difference in rate at equal quality, in percent (negative:
the test method needs fewer bits), after G. Bjontegaard, "Calculation of average PSNR differences
between RD-curves" (VCEG-M33, 2001): log-rate as a function of quality is fitted for each curve,
by a cubic polynomial (``method="cubic"``, VCEG-M33) or piecewise-cubic Hermite interpolation
(``method="pchip"``, as the later JVET/VCEG practice), integrated over the interval of quality
both curves cover, and the mean difference d gives 100 (exp(d) - 1). Quality may be any metric:
for metrics where lower is better (LPIPS, DISTS) the interval and the fit work the same.
`bd_quality` is the dual: the mean quality difference at equal rate (e.g. BD-PSNR in dB).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator


def _curve(rate, quality):
    r, q = np.asarray(rate, np.float64), np.asarray(quality, np.float64)
    ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
    r, q = r[ok], q[ok]
    if len(r) < 2:
        raise ValueError(f"a rate-distortion curve needs at least 2 valid points, got {len(r)}")
    return np.log(r), q


def _integral(x, y, lo, hi, method):
    """The integral of y(x) over [lo, hi] from the points (x, y)."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    if method == "cubic":
        p = np.polyint(np.polyfit(x, y, min(3, len(x) - 1)))
        return np.polyval(p, hi) - np.polyval(p, lo)
    if method == "pchip":
        if np.any(np.diff(x) <= 0):
            raise ValueError("pchip needs strictly monotone quality along the curve")
        return PchipInterpolator(x, y).integrate(lo, hi)
    raise ValueError(f"unknown method {method!r}; expected 'cubic' or 'pchip'")


def _delta(xa, ya, xb, yb, method):
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if not hi > lo:
        return None                                   # the curves share no interval
    return (_integral(xb, yb, lo, hi, method) - _integral(xa, ya, lo, hi, method)) / (hi - lo)


def bd_rate(anchor_rate, anchor_quality, test_rate, test_quality, method: str = "cubic") -> float | None:
    """Bjontegaard-delta rate of test against anchor in percent; None when the quality ranges
    do not overlap."""
    la, qa = _curve(anchor_rate, anchor_quality)
    lb, qb = _curve(test_rate, test_quality)
    d = _delta(qa, la, qb, lb, method)
    return None if d is None else 100.0 * math.expm1(d)


def bd_quality(anchor_rate, anchor_quality, test_rate, test_quality, method: str = "cubic") -> float | None:
    """Bjontegaard-delta quality (test minus anchor, in the metric's unit) at equal rate; None
    when the rate ranges do not overlap."""
    la, qa = _curve(anchor_rate, anchor_quality)
    lb, qb = _curve(test_rate, test_quality)
    return _delta(la, qa, lb, qb, method)


def rate_at_quality(rate, quality, target: float, higher_is_better: bool = True) -> tuple[float, bool] | None:
    """(rate, censored): the lowest rate at which the curve reaches `target` quality, linear in
    log-rate between the measured points; censored is True when the lowest measured rate already
    reaches it (the true rate is at most that). None when no measured point reaches it. The curve
    is taken as measured (sorted by rate): the first crossing of the target counts."""
    lr, q = _curve(rate, quality)
    order = np.argsort(lr)
    lr, q = lr[order], q[order]
    good = q >= target if higher_is_better else q <= target
    if not good.any():
        return None
    i = int(np.argmax(good))
    if i == 0:
        return float(np.exp(lr[0])), True
    t = (target - q[i - 1]) / (q[i] - q[i - 1])
    return float(np.exp(lr[i - 1] + t * (lr[i] - lr[i - 1]))), False
