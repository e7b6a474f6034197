"""Training the allocation policy on images with the codec frozen (PCDC Algorithm 1).

One iteration on a batch of crops x [B, S, S, 3]:
  1. encoder side (frozen codec): y, mu, t, the symbols and exact rate table of every block at
     every level, the static features;
  2. a budget R_max per crop (a random point between its coarsest- and finest-uniform rate, or a
     given bpp for test-time adaptation);
  3. rollout of the masked policy (sampled levels, budget never exceeded);
  4. reward: decode with the real decoder -- context decoder and `reward_steps` DDIM steps of the
     diffusion U-Net -- and score U = -(1.0 MSE + 0.5 (1 - SSIM) + 0.2 LPIPS + 0.2 DISTS)
     (eq. 5), r = U - eta (R_tot - R_max) (eq. 6);
  5. the PPO update (one `lax.scan` over epochs and minibatches) and the dual step on eta.
All five are one jitted call (`jit_train_step`).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pcdc_jax.allocation import features, policy, ppo
from pcdc_jax.allocation.rates import symbols_and_rates
from pcdc_jax.codec import quantize as q
from pcdc_jax.codec.model import Codec
from pcdc_jax.config import Config
from pcdc_jax.diffusion import sampler
from pcdc_jax.metrics import fidelity, perceptual


class Frozen(NamedTuple):
    """Everything the reward needs that training does not change."""

    codec: Any           # codec parameters
    unet: Any            # U-Net parameters (None: the reward decodes x_base)
    y_bits: jax.Array    # [S, L] bits of each coding-table entry (Coder.y_bits)
    y_half: jax.Array    # [S] int32
    lpips: Any           # AlexNet LPIPS weights (None when w_lpips = 0)
    vgg: Any             # VGG16 weights for DISTS (None when w_dists = 0)
    dists: Any           # DISTS alpha, beta


def load_frozen(model, y_bits, y_half, cfg: Config) -> Frozen:
    """Frozen parts from a checkpoint.Model and its Coder's tables (metric weights as needed)."""
    from pcdc_jax.metrics import weights
    ac = cfg.allocation
    return Frozen(model.params, model.unet, jnp.asarray(y_bits), jnp.asarray(y_half, jnp.int32),
                  weights.load("alex") if ac.w_lpips > 0 else None,
                  weights.load("vgg") if ac.w_dists > 0 else None,
                  weights.load_dists() if ac.w_dists > 0 else None)


class Analysis(NamedTuple):
    static: jax.Array    # [B, N, Fs]
    rates: jax.Array     # float32 [B, N, K] exact bits
    symbols: jax.Array   # int32 [B, K, h, w, M]
    mu: jax.Array        # [B, h, w, M]


def analyze(fr: Frozen, x: jax.Array, cfg: Config) -> Analysis:
    """Encoder side of crops x [B, S, S, 3] (S a multiple of 64) with the float hyper path."""
    codec = Codec(cfg.codec)
    p = {"params": fr.codec}
    y, z = codec.apply(p, x, method=Codec.analysis)
    mu, t = codec.apply(p, jnp.round(z), method=Codec.hyper)
    t = t.astype(jnp.int32)
    symbols, rates = jax.vmap(lambda a, b, c: symbols_and_rates(
        a, b, c, fr.y_bits, fr.y_half, cfg=cfg.codec))(y, mu, t)
    return Analysis(features.static(x, y, mu, t, symbols, rates, cfg), rates, symbols, mu)


def decode(fr: Frozen, an: Analysis, levels: jax.Array, key: jax.Array, cfg: Config) -> jax.Array:
    """What the decoder makes of the crops at level maps [B, h, w]: x_hat [B, S, S, 3] in [0, 1]."""
    d = cfg.diffusion
    symbols = jnp.take_along_axis(an.symbols, levels[:, None, :, :, None], axis=1)[:, 0]
    y_hat = q.dequantize(symbols, an.mu, levels, cfg.codec)
    x_base, feats = Codec(cfg.codec).apply({"params": fr.codec}, y_hat, levels, method=Codec.synthesis)
    steps = cfg.allocation.reward_steps
    if steps == 0 or fr.unet is None:
        return jnp.clip(x_base, 0.0, 1.0)

    def noise(i):
        return jax.random.normal(jax.random.fold_in(key, i), x_base.shape)

    r = sampler.ddim(sampler.denoiser(d, fr.unet, x_base, feats), noise, steps, d.eta, d.schedule,
                     d.t_start)
    return jnp.clip(x_base + d.residual_scale * r, 0.0, 1.0)


def utility(fr: Frozen, x_hat: jax.Array, x: jax.Array, cfg: Config) -> tuple[jax.Array, dict]:
    """Eq. 5: U = -(w_mse MSE + w_ssim (1 - SSIM) + w_lpips LPIPS + w_dists DISTS), [B]."""
    ac = cfg.allocation
    terms = {"mse": fidelity.mse(x_hat, x), "ssim": fidelity.ssim(x_hat, x)}
    u = -ac.w_mse * terms["mse"] - ac.w_ssim * (1.0 - terms["ssim"])
    if ac.w_lpips > 0:
        terms["lpips"] = perceptual.lpips(fr.lpips, x_hat, x, "alex")
        u = u - ac.w_lpips * terms["lpips"]
    if ac.w_dists > 0:
        terms["dists"] = perceptual.dists(fr.vgg, fr.dists, x_hat, x)
        u = u - ac.w_dists * terms["dists"]
    return u, terms


def budgets(rates_bits: jax.Array, key: jax.Array, cfg: Config, target_bpp=None) -> jax.Array:
    """Budget (int32 bits) per image of int rates [B, N, K]: a random fraction u ~
    U(budget_lo, budget_hi) of the way from the coarsest- to the finest-uniform total, or
    target_bpp [B] * pixels clipped to that range."""
    ac = cfg.allocation
    lo, hi = jnp.sum(rates_bits[..., 0], -1), jnp.sum(rates_bits[..., -1], -1)
    if target_bpp is None:
        u = jax.random.uniform(key, lo.shape, minval=ac.budget_lo, maxval=ac.budget_hi)
        b = lo + u * (hi - lo).astype(jnp.float32)
    else:
        b = target_bpp * rates_bits.shape[-2] * features.PIXELS
    return jnp.clip(jnp.floor(b), lo, jnp.maximum(hi, lo)).astype(jnp.int32)


def episodes(an: Analysis, key: jax.Array, cfg: Config, target_bpp=None) -> policy.Env:
    """The crops' allocation problems (every block inside), with `budgets`."""
    env = policy.make_env(an.static, an.rates, jnp.ones(an.rates.shape[:2], bool), 0)
    return env._replace(budget=budgets(env.rates, key, cfg, target_bpp))


def uniform_levels(rates_bits: jax.Array, budget: jax.Array) -> jax.Array:
    """The finest level k (int32 [B]) whose uniform total fits the budget (0 if none does), of int
    rates [B, N, K] and budgets [B]: CDC's allocation, the reference of the relative reward."""
    fits = jnp.sum(rates_bits, axis=-2) <= budget[:, None]                     # [B, K]
    k = jnp.arange(rates_bits.shape[-1])
    return jnp.max(jnp.where(fits, k, 0), axis=-1).astype(jnp.int32)


def train_step(state: ppo.PPOState, x: jax.Array, key: jax.Array, fr: Frozen, target_bpp=None, *,
               cfg: Config) -> tuple[ppo.PPOState, dict]:
    """One PPO-Lagrangian iteration on crops x [B, S, S, 3] in [0, 1] (module docstring)."""
    ac = cfg.allocation
    kb, kr, kd, ku = jax.random.split(key, 4)
    an = jax.lax.stop_gradient(analyze(fr, x, cfg))
    b, n, _ = an.rates.shape
    h, w = an.mu.shape[1:3]
    env = episodes(an, kb, cfg, target_bpp)
    traj = policy.rollout_batch(state.params, env, kr, cfg=cfg)
    u, terms = utility(fr, decode(fr, an, traj.action.reshape(b, h, w), kd, cfg), x, cfg)
    pixels = n * features.PIXELS
    metrics = {"utility": jnp.mean(u)}
    if ac.relative_reward:
        ref = uniform_levels(env.rates, env.budget)
        u_ref, _ = utility(fr, decode(fr, an, jnp.broadcast_to(ref[:, None, None], (b, h, w)), kd, cfg),
                           x, cfg)
        metrics.update(utility_uniform=jnp.mean(u_ref), gain=jnp.mean(u - u_ref))
        u = u - u_ref
    r = ppo.reward(u, traj.bits, env.budget, pixels, state.eta)
    batch = ppo.flatten(traj, r, env.inside, ac.minibatches)
    new, m = ppo.update(state, batch, ku, cfg=cfg)
    metrics.update(m)
    new = new._replace(eta=ppo.dual_update(state.eta, traj.bits, env.budget, pixels, ac.dual_lr))
    metrics.update({k: jnp.mean(v) for k, v in terms.items()})
    metrics.update(reward=jnp.mean(r), eta=new.eta,
                   bpp=jnp.mean(traj.bits) / pixels, budget_bpp=jnp.mean(env.budget) / pixels,
                   mean_level=jnp.mean(traj.action.astype(jnp.float32)))
    return new, metrics


def jit_train_step(cfg: Config):
    """fn(state, x, key, frozen, target_bpp=None) -> (state, metrics), jitted per config."""
    return jax.jit(functools.partial(train_step, cfg=cfg))


def random_crops(x: jax.Array, key: jax.Array, cfg: Config) -> jax.Array:
    """allocation.adapt_episodes random crops of a canvas x [H, W, 3] (H, W multiples of 64) for
    test-time adaptation: side min(adapt_crop, H, W) rounded down to a multiple of 64, at
    block-aligned offsets. Returns [E, S, S, 3]."""
    ac = cfg.allocation
    H, W = x.shape[:2]
    s = max(64, min(ac.adapt_crop, H, W) // 64 * 64)
    offsets = jax.random.randint(key, (ac.adapt_episodes, 2), 0,
                                 jnp.asarray([(H - s) // 16 + 1, (W - s) // 16 + 1])) * 16
    return jax.vmap(lambda o: jax.lax.dynamic_slice(x, (o[0], o[1], 0), (s, s, 3)))(offsets)


def init(cfg: Config, fr: Frozen, x: jax.Array, key: jax.Array) -> ppo.PPOState:
    """A fresh policy whose observation normalization comes from rollouts on crops x."""
    kp, kb, kr = jax.random.split(key, 3)
    params = policy.init_params(cfg, kp)
    env = episodes(analyze(fr, x, cfg), kb, cfg)
    traj = policy.rollout_batch(params, env, kr, cfg=cfg)
    obs = traj.obs.reshape(-1, traj.obs.shape[-1])
    return ppo.init_state(cfg, policy.set_normalization(params, obs, jnp.ones(obs.shape[:1])))
