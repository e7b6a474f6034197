"""The allocation policy: actor-critic over K levels with a budget mask, and its rollout.

pi(a_b | s_b) is a categorical over the K quantization levels (distrax) whose logits are set to
-1e9 outside the mask, so masked levels get probability exactly 0. The mask keeps, at block b,
only the levels that leave enough bits for every later block at the coarsest level:

    rates[b, k] + sum_{j > b} rates[j, 0] <= remaining_b,

so whatever the policy samples, the total never exceeds the budget R_max (eq. 7's constraint
holds by construction; level 0 always passes when the budget is feasible at all). Rates are
whole bits (the exact table rounded up) so the running budget is exact integer arithmetic.

The rollout visits the blocks in raster order as one `lax.scan` carrying the remaining budget,
vmapped over images; no Python loop over blocks.
"""
from __future__ import annotations

from typing import NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdc_jax.allocation import features
from pcdc_jax.config import Config

NEG = -1e9   # masked logit: exp underflows to exactly 0 in float32


class MLP(nn.Module):
    hidden: tuple[int, ...]
    out: int
    out_scale: float

    @nn.compact
    def __call__(self, x):
        for h in self.hidden:
            x = jnp.tanh(nn.Dense(h, kernel_init=nn.initializers.orthogonal(jnp.sqrt(2.0)))(x))
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.out_scale))(x)


class ActorCritic(nn.Module):
    """obs [..., F] (normalized) -> (logits [..., K], value [...]); separate actor and critic."""

    hidden: tuple[int, ...]
    num_levels: int

    @nn.compact
    def __call__(self, obs):
        logits = MLP(self.hidden, self.num_levels, 0.01, name="actor")(obs)
        value = MLP(self.hidden, 1, 1.0, name="critic")(obs)[..., 0]
        return logits, value


def _net(cfg: Config) -> ActorCritic:
    return ActorCritic(tuple(cfg.allocation.hidden), cfg.codec.num_levels)


def init_params(cfg: Config, key: jax.Array) -> dict:
    """{"actor", "critic": Flax params, "norm": {"mean", "std"} [F]} (identity normalization)."""
    f = features.num_features(cfg)
    p = _net(cfg).init(key, jnp.zeros((f,)))["params"]
    return {"actor": p["actor"], "critic": p["critic"],
            "norm": {"mean": jnp.zeros((f,)), "std": jnp.ones((f,))}}


def set_normalization(params: dict, obs: jax.Array, weight: jax.Array) -> dict:
    """Fixes the observation normalization to the weighted mean and std of obs [n, F] (weight
    [n]); done once, from the first rollouts of a training run."""
    w = weight.astype(jnp.float32)[:, None]
    mean = jnp.sum(w * obs, 0) / jnp.maximum(jnp.sum(w), 1.0)
    std = jnp.sqrt(jnp.sum(w * jnp.square(obs - mean), 0) / jnp.maximum(jnp.sum(w), 1.0))
    return {**params, "norm": {"mean": mean, "std": jnp.maximum(std, 1e-2)}}


def apply(params: dict, obs: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """obs [..., F] -> (logits [..., K], value [...])."""
    norm = jax.lax.stop_gradient(params["norm"])
    o = (obs - norm["mean"]) / norm["std"]
    return _net(cfg).apply({"params": {"actor": params["actor"], "critic": params["critic"]}}, o)


def masked_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, logits, NEG)


def distribution(logits: jax.Array, mask: jax.Array) -> distrax.Categorical:
    """The masked categorical pi(. | s_b) over the K levels."""
    return distrax.Categorical(logits=masked_logits(logits, mask))


def budget_mask(rates_b: jax.Array, remaining: jax.Array, floor_after: jax.Array,
                inside: jax.Array) -> jax.Array:
    """bool [K]: levels whose bits still leave the coarsest level for every later block.

    rates_b int [K]; remaining, floor_after int scalars (bits); a padding block (inside False)
    may only take level 0. Level 0 is always allowed (it fits whenever the budget is feasible).
    """
    k = jnp.arange(rates_b.shape[-1])
    fits = rates_b + floor_after <= remaining
    return (fits & (inside | (k == 0))) | (k == 0)


class Env(NamedTuple):
    """One image's allocation problem (add a leading batch axis for a batch of images)."""

    static: jax.Array   # float32 [N, Fs]: features.static
    rates: jax.Array    # int32 [N, K]: bits of every block at every level (rounded up)
    inside: jax.Array   # bool [N]: block overlaps the image (padding blocks take level 0)
    budget: jax.Array   # int32 []: bits the N blocks may spend in all (R_max minus side info)


class Trajectory(NamedTuple):
    obs: jax.Array      # float32 [N, F]
    mask: jax.Array     # bool [N, K]
    action: jax.Array   # int32 [N]: the level of each block
    logp: jax.Array     # float32 [N]: log pi(a_b | s_b) under the rollout's parameters
    value: jax.Array    # float32 [N]: V(s_b)
    bits: jax.Array     # int32 []: total bits of the chosen levels (<= budget when feasible)


class _Carry(NamedTuple):
    remaining: jax.Array


def make_env(static: jax.Array, rates: jax.Array, inside: jax.Array, budget) -> Env:
    """Env from float rates (bits): rounded up to whole bits, budget rounded down."""
    return Env(static.astype(jnp.float32), jnp.ceil(rates).astype(jnp.int32),
               inside.astype(bool), jnp.floor(jnp.asarray(budget)).astype(jnp.int32))


def coarsest_bits(env: Env) -> jax.Array:
    """Bits with every block at level 0: the budget must be at least this."""
    return jnp.sum(env.rates[..., 0], axis=-1)


def rollout(params: dict, env: Env, key: jax.Array, *, cfg: Config, greedy: bool = False) -> Trajectory:
    """One episode over the blocks of one image in raster order (a `lax.scan`).

    greedy=True takes the most likely allowed level (encoding); otherwise levels are sampled
    (training, with key). Vmap over a leading axis of env and key for a batch of images.
    """
    n = env.rates.shape[0]
    suffix = jnp.cumsum(env.rates[::-1], axis=0)[::-1]          # [N, K]: bits of blocks b.. at k
    floor_after = suffix[:, 0] - env.rates[:, 0]
    keys = jax.random.split(key, n)

    def step(carry: _Carry, xs):
        b, static, rates_b, suffix_b, floor_b, inside_b, key_b = xs
        obs = jnp.concatenate([static, features.dynamic(carry.remaining, suffix_b, n - b, n)])
        logits, value = apply(params, obs, cfg)
        mask = budget_mask(rates_b, carry.remaining, floor_b, inside_b)
        logits = masked_logits(logits, mask)
        a = jnp.argmax(logits) if greedy else jax.random.categorical(key_b, logits)
        logp = jax.nn.log_softmax(logits)[a]
        return _Carry(carry.remaining - rates_b[a]), (obs, mask, a.astype(jnp.int32), logp, value)

    xs = (jnp.arange(n), env.static, env.rates, suffix, floor_after, env.inside, keys)
    carry, (obs, mask, action, logp, value) = jax.lax.scan(step, _Carry(env.budget), xs)
    return Trajectory(obs, mask, action, logp, value, env.budget - carry.remaining)


def rollout_batch(params: dict, env: Env, key: jax.Array, *, cfg: Config, greedy: bool = False) -> Trajectory:
    """`rollout` over a batch: env fields with a leading axis [B, ...] -> Trajectory [B, ...]."""
    keys = jax.random.split(key, env.budget.shape[0])
    return jax.vmap(lambda e, k: rollout(params, e, k, cfg=cfg, greedy=greedy))(env, keys)

