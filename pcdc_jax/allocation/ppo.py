"""PPO-Lagrangian update of the allocation policy (PCDC eqs. 6-10).

An episode is one image: every block b gets the image's reward
    r = U - eta (R_tot - R_max)                                   (eq. 6; rates in bpp)
so the return of every step is r and the advantage is A_b = r - V(s_b) (eq. 9). The actor
minimizes the clipped surrogate with an entropy bonus (eq. 10), the critic regresses V(s_b) on r,
and eta follows projected dual ascent eta <- max(0, eta + alpha (R_tot - R_max)) (eq. 8).

`update` is the whole PPO update -- epochs x minibatches over all blocks of the batch -- as ONE
jitted call (`lax.scan` over epochs and minibatches). Blocks are flattened and padded (weight 0)
to a power-of-two bucket, so batches of any number of blocks share a handful of compilations.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcdc_jax.allocation import policy
from pcdc_jax.allocation.policy import Trajectory
from pcdc_jax.config import AllocationConfig, Config


class PPOState(NamedTuple):
    step: jax.Array      # int32: updates done
    params: Any          # policy.init_params tree
    opt_state: Any
    eta: jax.Array       # float32: the Lagrange multiplier of the rate constraint


class Batch(NamedTuple):
    """All blocks of a batch of episodes, flattened: [n, ...]."""

    obs: jax.Array       # float32 [n, F]
    mask: jax.Array      # bool [n, K]
    action: jax.Array    # int32 [n]
    logp: jax.Array      # float32 [n]: log pi_old(a | s)
    value: jax.Array     # float32 [n]: V_old(s)
    ret: jax.Array       # float32 [n]: the episode's reward r
    weight: jax.Array    # float32 [n]: 1 for real, learnable blocks; 0 for padding


def _labels(params):
    return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}


def make_optimizer(ac: AllocationConfig) -> optax.GradientTransformation:
    """Adam with the paper's separate actor (3e-4) and critic (1e-3) rates; the observation
    normalization is frozen."""
    return optax.chain(optax.clip_by_global_norm(ac.grad_clip), optax.multi_transform(
        {"actor": optax.adam(ac.actor_lr), "critic": optax.adam(ac.critic_lr),
         "norm": optax.set_to_zero()}, _labels))


def init_state(cfg: Config, params) -> PPOState:
    params = jax.tree.map(jnp.asarray, params)
    return PPOState(jnp.zeros((), jnp.int32), params, make_optimizer(cfg.allocation).init(params),
                    jnp.asarray(cfg.allocation.eta_init, jnp.float32))


def reward(utility: jax.Array, bits: jax.Array, budget: jax.Array, pixels, eta: jax.Array) -> jax.Array:
    """Eq. 6: r = U - eta (R_tot - R_max), R in bits per pixel. All [B] (pixels scalar or [B])."""
    return utility - eta * (bits - budget) / pixels


def dual_update(eta: jax.Array, bits: jax.Array, budget: jax.Array, pixels, lr: float) -> jax.Array:
    """Eq. 8, projected dual ascent on the batch mean: max(0, eta + lr mean(R_tot - R_max))."""
    return jnp.maximum(0.0, eta + lr * jnp.mean((bits - budget) / pixels))


def advantages(ret: jax.Array, value: jax.Array) -> jax.Array:
    """Eq. 9: A_b = r - V(s_b)."""
    return ret - value


def bucket(n: int, minibatches: int) -> int:
    """Padded block count: the next power of two >= n, rounded up to a multiple of minibatches."""
    p = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    return minibatches * math.ceil(p / minibatches)


def flatten(traj: Trajectory, ret: jax.Array, inside: jax.Array, minibatches: int) -> Batch:
    """Trajectories [B, N] with rewards [B] and inside [B, N] -> a Batch padded to `bucket`.

    Padding blocks of the image (inside False) have a forced action and get weight 0 too.
    Shapes are static, so this runs inside or outside jit alike.
    """
    b, n = traj.action.shape
    pad = bucket(b * n, minibatches) - b * n

    def flat(a, fill=0):
        a = jnp.reshape(a, (b * n, *a.shape[2:]))
        return jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)

    rets = jnp.broadcast_to(jnp.asarray(ret, jnp.float32)[:, None], (b, n))
    mask = flat(traj.mask, False).at[b * n:, 0].set(True)   # padding: a one-level distribution
    return Batch(flat(traj.obs), mask, flat(traj.action), flat(traj.logp), flat(traj.value),
                 flat(rets), flat(jnp.asarray(inside, jnp.float32)))


def normalized_advantages(batch: Batch, normalize: bool) -> jax.Array:
    """Eq. 9 over the batch, then (optionally) standardized over the weighted blocks."""
    adv = advantages(batch.ret, batch.value)
    if not normalize:
        return adv
    w = batch.weight
    total = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w * adv) / total
    std = jnp.sqrt(jnp.sum(w * jnp.square(adv - mean)) / total)
    return (adv - mean) / (std + 1e-8)


def loss_fn(params, mb: Batch, adv: jax.Array, cfg: Config):
    """Eq. 10 on a minibatch: -clipped surrogate - c_ent entropy + c_v (V - r)^2, weighted means."""
    ac = cfg.allocation
    logits, value = policy.apply(params, mb.obs, cfg)
    logits = policy.masked_logits(logits, mb.mask)
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, mb.action[:, None], -1)[:, 0]
    ratio = jnp.exp(logp - mb.logp)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - ac.clip, 1.0 + ac.clip) * adv)
    entropy = -jnp.sum(jnp.where(mb.mask, jnp.exp(logp_all) * logp_all, 0.0), -1)
    w = mb.weight
    total = jnp.maximum(jnp.sum(w), 1.0)
    mean = lambda a: jnp.sum(w * a) / total  # noqa: E731
    actor = -mean(surrogate) - ac.entropy_weight * mean(entropy)
    critic = mean(jnp.square(value - mb.ret))
    loss = actor + ac.value_weight * critic
    return loss, {"loss": loss, "actor_loss": actor, "critic_loss": critic, "entropy": mean(entropy),
                  "approx_kl": mean(mb.logp - logp),
                  "clip_fraction": mean((jnp.abs(ratio - 1.0) > ac.clip).astype(jnp.float32))}


class _Opt(NamedTuple):
    params: Any
    opt_state: Any


def update(state: PPOState, batch: Batch, key: jax.Array, *, cfg: Config) -> tuple[PPOState, dict]:
    """The PPO update: `epochs` passes, each over `minibatches` random minibatches of all blocks.

    batch: `flatten`'s output (n a multiple of minibatches). Returns the new state (step + 1,
    eta unchanged: see `dual_update`) and the metrics averaged over every minibatch.
    """
    ac = cfg.allocation
    n = batch.action.shape[0]
    m = ac.minibatches
    adv = normalized_advantages(batch, ac.normalize_advantages)
    opt = make_optimizer(ac)

    def minibatch(carry: _Opt, idx):
        mb = jax.tree.map(lambda a: a[idx], batch)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(carry.params, mb, adv[idx], cfg)
        updates, opt_state = opt.update(grads, carry.opt_state, carry.params)
        return _Opt(optax.apply_updates(carry.params, updates), opt_state), metrics

    def epoch(carry: _Opt, k):
        perm = jax.random.permutation(k, n).reshape(m, n // m)
        return jax.lax.scan(minibatch, carry, perm)

    carry, metrics = jax.lax.scan(epoch, _Opt(state.params, state.opt_state),
                                  jax.random.split(key, ac.epochs))
    metrics = jax.tree.map(jnp.mean, metrics)
    return state._replace(step=state.step + 1, params=carry.params, opt_state=carry.opt_state), metrics


def jit_update(cfg: Config):
    """jit(update) for one config: fn(state, batch, key) -> (state, metrics)."""
    return jax.jit(functools.partial(update, cfg=cfg))
