"""Noise schedules as pure functions of continuous time t in [0, 1].

The forward process is r_t = sqrt(alpha_bar(t)) r0 + sqrt(1 - alpha_bar(t)) eps, with
alpha_bar(0) = 1 (clean) and alpha_bar(1) ~ 0 (pure noise).
"""
from __future__ import annotations

import math

import jax.numpy as jnp

COSINE_OFFSET = 0.008           # Nichol & Dhariwal 2021, eq. 17
LINEAR_BETA = (0.1, 20.0)       # continuous VP schedule (Song et al. 2021): beta(t) = b0 + (b1-b0) t


def alpha_bar(t, kind: str = "cosine"):
    """Signal fraction alpha_bar(t) in [0, 1], same shape as t."""
    t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0)
    if kind == "cosine":
        s = COSINE_OFFSET
        f = jnp.cos((t + s) / (1 + s) * (math.pi / 2)) ** 2
        return jnp.clip(f / math.cos(s / (1 + s) * math.pi / 2) ** 2, 0.0, 1.0)
    if kind == "linear":
        b0, b1 = LINEAR_BETA
        return jnp.exp(-(b0 * t + 0.5 * (b1 - b0) * t * t))
    raise ValueError(f"unknown schedule {kind!r} (cosine or linear)")


def snr(t, kind: str = "cosine"):
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) (inf at t=0)."""
    a = alpha_bar(t, kind)
    return a / jnp.maximum(1.0 - a, 1e-12)


def log_snr(t, kind: str = "cosine"):
    a = alpha_bar(t, kind)
    return jnp.log(jnp.maximum(a, 1e-20)) - jnp.log(jnp.maximum(1.0 - a, 1e-20))
