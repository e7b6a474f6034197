"""The codec's part of training: optimizer, random level maps, rate warm-up, rate + MSE loss.

The step that trains the full codec (this loss plus the diffusion loss) is `pcdc_jax.training`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from pcdc_jax.config import Config, TrainConfig


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.learning_rate, tc.lr_warmup_steps, max(tc.total_steps, tc.lr_warmup_steps + 1),
        end_value=tc.learning_rate * tc.lr_final_fraction)
    parts = [optax.clip_by_global_norm(tc.grad_clip), optax.adam(schedule)]
    for factor, names in ((tc.linear_lr_scale, ("block_linear",)),
                          (tc.entropy_lr_scale, ENTROPY_MODEL)):
        if factor != 1.0:
            parts.append(optax.masked(optax.scale(factor), functools.partial(_under, names=names)))
    return optax.chain(*parts)


ENTROPY_MODEL = ("hyper_encoder", "hyper_decoder", "z_prior")


def _under(params, names):
    """True at the leaves whose path passes through a module named in `names`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(k, "key", None) in names for k in path), params)


def apply_gradients(state, grads, tc: TrainConfig):
    """A (step, params, opt_state) NamedTuple after one optimizer step with `grads`."""
    updates, opt_state = make_optimizer(tc).update(grads, state.opt_state, state.params)
    return state._replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)


def random_levels(key, batch: int, h: int, w: int, num_levels: int) -> jax.Array:
    """Independent uniform level per block, so every level is learned."""
    return jax.random.randint(key, (batch, h, w), 0, num_levels)


def rate_weight(step, tc: TrainConfig):
    frac = jnp.clip(step / max(tc.rate_warmup_steps, 1), 0.0, 1.0)
    return tc.rate_weight_start + (1.0 - tc.rate_weight_start) * frac


def codec_loss(out: dict, x: jax.Array, levels: jax.Array, step, cfg: Config):
    """(loss, metrics) of a `Codec.__call__` output for images x [B, H, W, 3] at `levels`.

    loss = w(step) * bpp + mean over pixels of lambda(level) * MSE * 255^2, where level k uses
    lmbda * (step_mid / step_k)^2 so every level sits at its own rate-distortion trade-off.
    """
    cc, tc = cfg.codec, cfg.train
    _, hh, ww, _ = x.shape
    num_pixels = hh * ww
    bpp = (jnp.sum(out["bits_y"], axis=(1, 2)) + out["bits_z"]) / num_pixels
    steps = jnp.asarray(cc.level_steps(), jnp.float32)
    lam = tc.lmbda * (steps[cc.num_levels // 2] / steps[levels]) ** 2          # [B, h, w]
    lam_px = jnp.repeat(jnp.repeat(lam, 16, axis=1), 16, axis=2)[..., None]
    se = jnp.square(out["x_base"] - x)
    mse = jnp.mean(se)
    loss = rate_weight(step, tc) * jnp.mean(bpp) + jnp.mean(lam_px * se) * 255.0 ** 2
    psnr = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
    return loss, {"loss_codec": loss, "bpp": jnp.mean(bpp), "mse": mse, "psnr": psnr,
                  "bpp_z": jnp.mean(out["bits_z"]) / num_pixels}
