"""Codec-stage training: rate + level-weighted MSE, one pure jitted step."""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcdc_jax.codec.model import Codec
from pcdc_jax.config import Config, TrainConfig


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.learning_rate, tc.lr_warmup_steps, max(tc.total_steps, tc.lr_warmup_steps + 1),
        end_value=tc.learning_rate * tc.lr_final_fraction)
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), optax.adam(schedule))


def init_state(cfg: Config, key: jax.Array | None = None, params=None) -> TrainState:
    """Step 0 with fresh optimizer state; parameters from `params` if given, else initialised with `key`."""
    if params is None:
        x = jnp.zeros((1, 64, 64, 3), jnp.float32)
        levels = jnp.zeros((1, 4, 4), jnp.int32)
        params = Codec(cfg.codec).init(key, x, levels, key)["params"]
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(cfg.train).init(params))


def random_levels(key, batch: int, h: int, w: int, num_levels: int) -> jax.Array:
    """Independent uniform level per block, so every level is learned."""
    return jax.random.randint(key, (batch, h, w), 0, num_levels)


def rate_weight(step, tc: TrainConfig):
    frac = jnp.clip(step / max(tc.rate_warmup_steps, 1), 0.0, 1.0)
    return tc.rate_weight_start + (1.0 - tc.rate_weight_start) * frac


def loss_fn(params, x, levels, key, step, cfg: Config):
    """Returns (loss, metrics). Loss = w(step) * bpp + mean over pixels of lambda(level) * MSE*255^2."""
    cc, tc = cfg.codec, cfg.train
    out = Codec(cc).apply({"params": params}, x, levels, key)
    b, hh, ww, _ = x.shape
    num_pixels = hh * ww
    bpp = (jnp.sum(out["bits_y"], axis=(1, 2)) + out["bits_z"]) / num_pixels
    steps = jnp.asarray(cc.level_steps(), jnp.float32)
    mid = steps[cc.num_levels // 2]
    lam = tc.lmbda * (mid / steps[levels]) ** 2                       # [B, h, w]
    lam_px = jnp.repeat(jnp.repeat(lam, 16, axis=1), 16, axis=2)[..., None]
    se = jnp.square(out["x_base"] - x)
    mse = jnp.mean(se)
    dist = jnp.mean(lam_px * se) * 255.0 ** 2
    loss = rate_weight(step, tc) * jnp.mean(bpp) + dist
    psnr = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
    return loss, {"loss": loss, "bpp": jnp.mean(bpp), "mse": mse, "psnr": psnr,
                  "bpp_z": jnp.mean(out["bits_z"]) / num_pixels}


def train_step(state: TrainState, x: jax.Array, key: jax.Array, *, cfg: Config):
    """One optimizer step on a batch x [B, H, W, 3] in [0, 1]; key is this step's key."""
    kl, kn = jax.random.split(key)
    b, h, w, _ = x.shape
    levels = random_levels(kl, b, h // 16, w // 16, cfg.codec.num_levels)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, x, levels, kn, state.step, cfg)
    updates, opt_state = make_optimizer(cfg.train).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(state.step + 1, params, opt_state), metrics


def jit_train_step(cfg: Config):
    return jax.jit(functools.partial(train_step, cfg=cfg), donate_argnums=(0,))
