"""Diffusion-decoder training: x0 (residual) target, truncated-SNR weighting, optional LPIPS.

The conditioning is what the decoder sees at decode time: the codec's rounded latent at random
per-block levels, through the context decoder. Here the codec is frozen (its parameters are an
argument, gradients flow to the U-Net only); `pcdc_jax.training` reuses `loss_fn` to train the
codec and the U-Net jointly.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcdc_jax.codec import quantize as q
from pcdc_jax.codec.model import Codec
from pcdc_jax.codec.training import apply_gradients, make_optimizer, random_levels
from pcdc_jax.config import Config
from pcdc_jax.diffusion import sampler, schedule
from pcdc_jax.diffusion.unet import UNet, feature_channels, init_params
from pcdc_jax.metrics import perceptual


class DiffusionState(NamedTuple):
    step: jax.Array
    params: Any          # U-Net parameters
    opt_state: Any


def init_state(cfg: Config, key: jax.Array | None = None, params=None) -> DiffusionState:
    """Step 0 with a fresh optimizer; U-Net parameters from `params` or initialised with `key`."""
    if params is None:
        params = init_params(cfg.diffusion, feature_channels(cfg.codec), key)
    params = jax.tree.map(jnp.asarray, params)
    return DiffusionState(jnp.zeros((), jnp.int32), params, make_optimizer(cfg.train).init(params))


def condition(codec_params, x: jax.Array, levels: jax.Array, cfg: Config):
    """Decode-time conditioning of x [B, H, W, 3] at a level map [B, H/16, W/16]: rounded z and
    symbols, mu from the hyper decoder -> (x_base [B, H, W, 3], {stride: features})."""
    cc = cfg.codec
    codec = Codec(cc)
    p = {"params": codec_params}
    y, z = codec.apply(p, x, method=Codec.analysis)
    mu, _ = codec.apply(p, jnp.round(z), method=Codec.hyper)
    y_hat = q.dequantize(q.quantize(y, mu, levels, cc), mu, levels, cc)
    return codec.apply(p, y_hat, levels, method=Codec.synthesis)


def chain_states(unet_params, x_base, features, key, cfg: Config):
    """Where the sampler's own chain stands: (r [B, H, W, 3], t [B]) after k ~ U{0..chain_steps-1}
    steps (one k for the batch) of the `chain_steps`-step DDIM from t_start, denoised by the
    U-Net with `unet_params` exactly as at decode time. No gradient flows through the chain."""
    d = cfg.diffusion
    unet_params, x_base, features = jax.lax.stop_gradient((unet_params, x_base, features))
    kk, kn = jax.random.split(key)
    ts = jnp.linspace(d.t_start, 0.0, d.chain_steps + 1)
    k = jax.random.randint(kk, (), 0, d.chain_steps)

    def noise(i):
        return jax.random.normal(jax.random.fold_in(kn, i), x_base.shape)

    denoise = sampler.denoiser(d, unet_params, x_base, features)
    r = sampler.ddim_start(noise(0), ts[0], d.schedule)
    r = jax.lax.fori_loop(0, k, lambda i, r: sampler.ddim_step(denoise, noise, r, ts, i, d.eta, d.schedule), r)
    return r, jnp.full((x_base.shape[0],), ts[k])


def loss_fn(unet_params, x, x_base, features, key, cfg: Config, lpips_params=None):
    """Returns (loss, metrics) for clean images x [B, H, W, 3] in [0, 1].

    r0 = (x - x_base) / residual_scale; r_t = sqrt(ab) r0 + sqrt(1 - ab) eps with
    t ~ U(0, t_start) (the times the sampler visits), except for the first
    round(chain_fraction * B) images, whose input is the sampler's own state (`chain_states`):
    with t_start < 1 the ordinary input still holds sqrt(ab) r0, which the sampler never has;
    loss = mean_b clip(SNR(t_b), snr_min, snr_max) * mean((r0_hat - r0)^2)
           + lpips_weight * LPIPS_alex(x_base + residual_scale * r0_hat, x).
    """
    d = cfg.diffusion
    kt, ke, kc = jax.random.split(key, 3)
    b = x.shape[0]
    t = d.t_start * jax.random.uniform(kt, (b,))
    ab = schedule.alpha_bar(t, d.schedule)[:, None, None, None]
    r0 = (x - x_base) / d.residual_scale
    # The noised input is data, as x_t is in CDC: in joint training no gradient reaches the codec
    # through it (the loss's own x0 error still does).
    r_t = jnp.sqrt(ab) * jax.lax.stop_gradient(r0) + jnp.sqrt(1.0 - ab) * jax.random.normal(ke, r0.shape)
    n = round(d.chain_fraction * b)
    if n:
        r_c, t_c = chain_states(unet_params, x_base[:n], jax.tree.map(lambda f: f[:n], features), kc, cfg)
        r_t, t = r_t.at[:n].set(r_c), t.at[:n].set(t_c)
    r0_hat = UNet(d).apply({"params": unet_params}, r_t, t, x_base, features)
    per_image = jnp.mean(jnp.square(r0_hat - r0), axis=(1, 2, 3))
    weight = jnp.clip(schedule.snr(t, d.schedule), d.snr_min, d.snr_max)
    loss = jnp.mean(weight * per_image)
    x0_hat = x_base + d.residual_scale * r0_hat
    metrics = {"mse_x0": jnp.mean(per_image) * d.residual_scale ** 2,
               "psnr_x0": jnp.mean(-10 * jnp.log10(jnp.maximum(
                   jnp.mean(jnp.square(x0_hat - x), axis=(1, 2, 3)), 1e-10))),
               "psnr_base": jnp.mean(-10 * jnp.log10(jnp.maximum(
                   jnp.mean(jnp.square(x_base - x), axis=(1, 2, 3)), 1e-10)))}
    if d.lpips_weight > 0:
        lp = perceptual.lpips(lpips_params, x0_hat, x, "alex")
        # the bar x0 has to clear: LPIPS of x_base itself
        lp_base = perceptual.lpips(lpips_params, jax.lax.stop_gradient(x_base), x, "alex")
        loss = loss + d.lpips_weight * jnp.mean(lp)
        metrics["lpips_x0"], metrics["lpips_base"] = jnp.mean(lp), jnp.mean(lp_base)
        if n:           # on the sampler's own states, the number that decides whether it helps
            metrics["lpips_chain"], metrics["lpips_chain_base"] = jnp.mean(lp[:n]), jnp.mean(lp_base[:n])
    metrics["loss"] = loss
    return loss, metrics


def train_step(state: DiffusionState, x: jax.Array, key: jax.Array, codec_params, lpips_params=None,
               *, cfg: Config):
    """One optimizer step of the U-Net on a batch x [B, H, W, 3] in [0, 1] (codec frozen)."""
    kl, kn = jax.random.split(key)
    b, h, w, _ = x.shape
    levels = random_levels(kl, b, h // 16, w // 16, cfg.codec.num_levels)
    x_base, features = jax.lax.stop_gradient(condition(codec_params, x, levels, cfg))
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, x, x_base, features, kn, cfg,
                                                     lpips_params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return apply_gradients(state, grads, cfg.train), metrics


def jit_train_step(cfg: Config):
    """jit(train_step) with the state donated: fn(state, x, key, codec_params, lpips_params=None)."""
    return jax.jit(functools.partial(train_step, cfg=cfg), donate_argnums=(0,))
