"""Entropy models: a learned factorized prior for z and a mean-scale Gaussian conditional for y.

The hyper decoder is an *integer network* (Balle et al. 2019, "Integer networks for data
compression with latent-variable models"): weights and activations live on fixed-point grids.
Training sees the same grids through straight-through rounding; at coding time
`IntegerHyperDecoder` evaluates it with integer-valued float64 tensors, whose products and sums are
exact (all below 2**53), so the mean and scale index of every element are bit-identical on any
backend, device count and batch size.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from pcdc_jax.codec.layers import depth_to_space
from pcdc_jax.config import CodecConfig


def ste_round(x: jax.Array) -> jax.Array:
    """Rounds in the forward pass, identity gradient."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FactorizedPrior(nn.Module):
    """Balle et al. 2018's non-parametric univariate density per channel of z.

    `cdf_logits(v)` returns logits of the cumulative distribution at v, [..., Cz].
    """

    channels: int
    filters: tuple[int, ...] = (3, 3, 3)
    init_scale: float = 10.0

    @nn.compact
    def cdf_logits(self, v: jax.Array) -> jax.Array:
        dims = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
        logits = v[..., None, None]  # [..., C, 1, 1]
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            matrix = self.param(f"matrix{i}", nn.initializers.constant(init),
                                (self.channels, dims[i + 1], dims[i]))
            bias = self.param(f"bias{i}", nn.initializers.uniform(1.0),
                              (self.channels, dims[i + 1], 1))
            bias = bias - 0.5
            logits = jnp.matmul(jax.nn.softplus(matrix), logits) + bias
            if i < len(self.filters):
                factor = self.param(f"factor{i}", nn.initializers.zeros, (self.channels, dims[i + 1], 1))
                logits = logits + jnp.tanh(factor) * jnp.tanh(logits)
        return logits[..., 0, 0]

    def __call__(self, v: jax.Array) -> jax.Array:
        """Probability mass of the unit interval centred on v, [..., Cz]."""
        lower = self.cdf_logits(v - 0.5)
        upper = self.cdf_logits(v + 0.5)
        sign = -jnp.sign(lower + upper)
        sign = jnp.where(sign == 0, 1.0, sign)
        return jnp.abs(jax.nn.sigmoid(sign * upper) - jax.nn.sigmoid(sign * lower))


def gaussian_likelihood(v: jax.Array, sigma: jax.Array) -> jax.Array:
    """Mass of N(0, sigma) on [v - 0.5, v + 0.5] (v in units of the quantization step)."""
    v = jnp.abs(v)
    return ndtr((0.5 - v) / sigma) - ndtr((-0.5 - v) / sigma)


def scale_table(cfg: CodecConfig) -> np.ndarray:
    """sigma_i = scale_min * exp(delta * i), i < num_scales (float64)."""
    return cfg.scale_min * np.exp(cfg.scale_log_delta * np.arange(cfg.num_scales, dtype=np.float64))


def scale_index(t: jax.Array, level: jax.Array, cfg: CodecConfig) -> jax.Array:
    """Integer log-scale t and level -> index into the scale table (exact integer arithmetic).

    Symbols are (y - mu) / step_k with step_k = exp(delta * e_k), so their scale is
    sigma / step_k = scale_min * exp(delta * (t - e_k)).
    """
    return jnp.clip(_unclipped_index(t, level, cfg), 0, cfg.num_scales - 1)


def _unclipped_index(t: jax.Array, level: jax.Array, cfg: CodecConfig) -> jax.Array:
    """t - e_level: the scale index before it is clipped to the table."""
    e = jnp.asarray(cfg.level_exponents, jnp.int32)[level]
    return t.astype(jnp.int32) - e[..., None]


def sigma_from_index(index: jax.Array, cfg: CodecConfig) -> jax.Array:
    return cfg.scale_min * jnp.exp(cfg.scale_log_delta * index.astype(jnp.float32))


def sigma_straight_through(t: jax.Array, level: jax.Array, cfg: CodecConfig) -> jax.Array:
    """The table scale of (t, level) with the gradient of a continuous one, d sigma / d t =
    delta * sigma, inside the table; 0 where t lies beyond either end of it, as the coded rate
    does not move there (a gradient there drives t, and the z behind it, without bound)."""
    raw = _unclipped_index(t, level, cfg)
    index = jnp.clip(raw, 0, cfg.num_scales - 1)
    inside = index == raw
    live = jnp.where(inside, t - jax.lax.stop_gradient(t), 0.0)
    return sigma_from_index(index, cfg) * jnp.exp(cfg.scale_log_delta * live)


class _QConv(nn.Module):
    """Convolution whose weights sit on a 2**-wbits grid and bias on a 2**-(wbits+abits) grid."""

    features: int
    kernel: int
    wbits: int
    abits: int

    @nn.compact
    def __call__(self, a):
        k = self.param("kernel", nn.initializers.lecun_normal(),
                       (self.kernel, self.kernel, a.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        kq = ste_round(k * 2.0 ** self.wbits) / 2.0 ** self.wbits
        bq = ste_round(b * 2.0 ** (self.wbits + self.abits)) / 2.0 ** (self.wbits + self.abits)
        pad = self.kernel // 2
        out = jax.lax.conv_general_dilated(a, kq, (1, 1), [(pad, pad), (pad, pad)],
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + bq


def _qact(x, cfg: CodecConfig):
    """ReLU clipped to [0, act_max] on the 2**-abits grid (straight-through)."""
    s = 2.0 ** cfg.int_act_bits
    return jnp.clip(ste_round(x * s) / s, 0.0, cfg.int_act_max)


class HyperDecoder(nn.Module):
    """z_hat [B, h/4, w/4, Cz] -> (mu [B, h, w, M], t [B, h, w, M]) on the integer grids.

    mu is on a 2**-abits grid; t is the integer log-scale (straight-through rounded).
    Layer list must match `IntegerHyperDecoder`.
    """

    cfg: CodecConfig

    @nn.compact
    def __call__(self, z_hat: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        wb, ab, c = cfg.int_weight_bits, cfg.int_act_bits, cfg.hyper_hidden
        a = jnp.clip(z_hat, -cfg.hyper_input_max, cfg.hyper_input_max)
        a = _qact(_QConv(c, 3, wb, ab, name="conv0")(a), cfg)
        a = _qact(depth_to_space(_QConv(4 * c, 3, wb, ab, name="conv1")(a), 2), cfg)
        a = _qact(depth_to_space(_QConv(4 * c, 3, wb, ab, name="conv2")(a), 2), cfg)
        out = _QConv(2 * cfg.latent_channels, 1, wb, ab, name="conv3")(a)
        mu_raw, t_raw = jnp.split(out, 2, axis=-1)
        s = 2.0 ** ab
        mu = ste_round(mu_raw * s) / s
        # t is offset so that a fresh network starts mid-table.
        t = ste_round(t_raw) + cfg.num_scales // 2
        return mu, t


class IntegerHyperDecoder:
    """Exact host-side evaluation of `HyperDecoder` (numpy, integer-valued float64).

    Built once from the parameters (`from_params`) and stored with the model as integer arrays.
    """

    LAYERS = ("conv0", "conv1", "conv2", "conv3")

    def __init__(self, cfg: CodecConfig, weights: dict[str, np.ndarray]):
        self.cfg = cfg
        self.weights = weights  # name/kernel and name/bias as integer-valued float64

    @classmethod
    def from_params(cls, cfg: CodecConfig, params) -> "IntegerHyperDecoder":
        wb, ab = cfg.int_weight_bits, cfg.int_act_bits
        weights = {}
        for name in cls.LAYERS:
            k = np.asarray(params[name]["kernel"], np.float64)
            b = np.asarray(params[name]["bias"], np.float64)
            weights[f"{name}/kernel"] = np.round(k * 2.0 ** wb)
            weights[f"{name}/bias"] = np.round(b * 2.0 ** (wb + ab))
        return cls(cfg, weights)

    def _conv(self, a: np.ndarray, name: str) -> np.ndarray:
        """a: integer-valued [h, w, cin] (scale 2**ab) -> integer-valued [h, w, cout] (2**(wb+ab))."""
        k = self.weights[f"{name}/kernel"]
        kh, kw, cin, cout = k.shape
        pad = kh // 2
        h, w, _ = a.shape
        ap = np.pad(a, ((pad, pad), (pad, pad), (0, 0)))
        out = np.empty((h, w, cout), np.float64)
        kmat = k.reshape(kh * kw * cin, cout)
        rows = max(1, (1 << 22) // max(1, w * kh * kw * cin))  # bound im2col memory
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            cols = np.concatenate(
                [ap[r0 + i:r1 + i, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
            out[r0:r1] = (cols.reshape(-1, kh * kw * cin) @ kmat).reshape(r1 - r0, w, cout)
        return out + self.weights[f"{name}/bias"]

    def _rescale(self, x: np.ndarray) -> np.ndarray:
        """2**(wb+ab) -> 2**ab grid, round half up (exact: division by a power of two)."""
        return np.floor(x / 2.0 ** self.cfg.int_weight_bits + 0.5)

    def _act(self, x: np.ndarray) -> np.ndarray:
        amax = self.cfg.int_act_max * 2.0 ** self.cfg.int_act_bits
        return np.clip(self._rescale(x), 0.0, amax)

    def __call__(self, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z_sym int [h/4, w/4, Cz] -> (mu float32 [h, w, M], t int32 [h, w, M])."""
        cfg = self.cfg
        ab = cfg.int_act_bits
        a = np.clip(z_sym.astype(np.float64), -cfg.hyper_input_max, cfg.hyper_input_max) * 2.0 ** ab
        a = self._act(self._conv(a, "conv0"))
        a = self._act(_d2s_np(self._conv(a, "conv1"), 2))
        a = self._act(_d2s_np(self._conv(a, "conv2"), 2))
        out = self._conv(a, "conv3")
        mu_fixed, t_fixed = np.split(out, 2, axis=-1)
        mu = self._rescale(mu_fixed) / 2.0 ** ab
        t = np.floor(t_fixed / 2.0 ** (cfg.int_weight_bits + ab) + 0.5) + cfg.num_scales // 2
        return mu.astype(np.float32), t.astype(np.int32)


def _d2s_np(x: np.ndarray, r: int) -> np.ndarray:
    h, w, c = x.shape
    c_out = c // (r * r)
    return x.reshape(h, w, r, r, c_out).transpose(0, 2, 1, 3, 4).reshape(h * r, w * r, c_out)
