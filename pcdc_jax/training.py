"""Training the full codec in one jitted step: encoder, priors, context decoder and diffusion U-Net.

loss = w_rate(step) * bpp + sum_levels lambda(level) * MSE(x_base)             (codec.training)
       + [step >= diffusion_start_step] * diffusion_weight * diffusion loss     (diffusion.training)

The diffusion loss (x0 loss with truncated-SNR weights, optional LPIPS) is computed on x_base and
the context features of the same forward pass, so its gradient reaches the codec as well as the
U-Net. Before `diffusion_start_step` the diffusion loss is computed (and logged) but weighted 0,
so neither the U-Net nor the codec learns from it. (A `lax.cond` that skips it instead made the
whole step 8x slower on CPU: `eval/bench_train.py`, BENCHMARKS.md.) With
`train.diffusion_weight == 0` there is no U-Net.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcdc_jax import checkpoint
from pcdc_jax.codec import entropy_coding, klt
from pcdc_jax.codec.model import Codec
from pcdc_jax.codec.training import apply_gradients, codec_loss, make_optimizer, random_levels
from pcdc_jax.config import Config
from pcdc_jax.diffusion import training as diffusion_training
from pcdc_jax.diffusion.unet import feature_channels, init_params


TRANSFORMS = ("encoder", "decoder")    # the codec's analysis and synthesis transforms


class TrainState(NamedTuple):
    step: jax.Array
    params: dict         # {"codec": ..., "unet": ...}; no "unet" when train.diffusion_weight == 0
    opt_state: Any


def has_unet(cfg: Config) -> bool:
    return cfg.train.diffusion_weight > 0


@functools.partial(jax.jit, static_argnums=0)
def _init_codec(cc, key):
    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    return Codec(cc).init(key, x, jnp.zeros((1, 4, 4), jnp.int32), key)["params"]


def init_params_codec(cfg: Config, key: jax.Array):
    """Fresh codec parameters (one compiled call: eager Flax init is slower on CPU)."""
    return _init_codec(cfg.codec, key)


def init_state(cfg: Config, key: jax.Array | None = None, codec_params=None, unet_params=None) -> TrainState:
    """Step 0 with a fresh optimizer. Parameters not given are initialised from `key`."""
    kc, ku = jax.random.split(key) if key is not None else (None, None)
    params = {"codec": init_params_codec(cfg, kc) if codec_params is None else codec_params}
    if has_unet(cfg):
        params["unet"] = (init_params(cfg.diffusion, feature_channels(cfg.codec), ku)
                          if unet_params is None else unet_params)
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(cfg.train).init(params))


def klt_start(cfg: Config, codec_params, dataset, batch_size: int):
    """Codec parameters started at the block KLT (`codec.klt`) of the first `train.klt_crops`
    crops of `dataset` (its batches of steps 0, 1, ...), with the local-activity hyperprior start
    when `codec.hyper_log_input`, the same in every process (process 0's)."""
    from jax.experimental import multihost_utils

    crops = klt.sample_crops(dataset, cfg.train.klt_crops, batch_size)
    k = klt.block_klt(crops)
    params = klt.init_linear_paths(jax.device_get(codec_params), cfg.codec, k, cfg.train.klt_step)
    if cfg.codec.hyper_log_input:
        params = klt.init_hyper_paths(params, cfg.codec, k, cfg.train.klt_step, crops)
    return multihost_utils.broadcast_one_to_all(params) if jax.process_count() > 1 else params


def abstract_state(cfg: Config) -> TrainState:
    """Shapes and dtypes of `init_state(cfg, key)` (nothing is computed)."""
    return jax.eval_shape(lambda: init_state(cfg, jax.random.PRNGKey(0)))


def same_shapes(a, b) -> bool:
    """True when two parameter trees have the same structure and leaf shapes."""
    shapes = [jax.tree.map(lambda x: tuple(x.shape), t) for t in (a, b)]
    return jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1]) and shapes[0] == shapes[1]


def state_digest(state: TrainState) -> str:
    """sha256 of this process's copy of the (replicated) state: equal in every process of a
    data-parallel run exactly when their gradients agreed at every step."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        h.update(np.asarray(leaf.addressable_shards[0].data if isinstance(leaf, jax.Array) else leaf).tobytes())
    return h.hexdigest()


def loss_fn(params, x, levels, key, step, cfg: Config, lpips_params=None):
    """(loss, metrics) for images x [B, H, W, 3] in [0, 1] at the level map `levels` [B, h, w]."""
    kc, kd = jax.random.split(key)
    out = Codec(cfg.codec).apply({"params": params["codec"]}, x, levels, kc, cfg.train.hyper_rounded_z)
    loss, metrics = codec_loss(out, x, levels, step, cfg)
    if "unet" in params:
        d_loss, d_metrics = diffusion_training.loss_fn(params["unet"], x, out["x_base"], out["features"],
                                                       kd, cfg, lpips_params)
        on = (step >= cfg.train.diffusion_start_step).astype(jnp.float32)
        loss = loss + on * cfg.train.diffusion_weight * d_loss
        d_metrics["loss_diffusion"] = d_metrics.pop("loss")
        metrics.update(d_metrics)
    metrics["loss"] = loss
    return loss, metrics


def train_step(state: TrainState, x: jax.Array, key: jax.Array, lpips_params=None, *, cfg: Config):
    """One optimizer step on a batch x [B, H, W, 3] in [0, 1] with random per-block levels."""
    kl, kn = jax.random.split(key)
    b, h, w, _ = x.shape
    levels = random_levels(kl, b, h // 16, w // 16, cfg.codec.num_levels)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, x, levels, kn, state.step, cfg,
                                                     lpips_params)
    if cfg.train.transform_freeze_steps:      # the entropy model learns first (a KLT start)
        on = (state.step >= cfg.train.transform_freeze_steps).astype(jnp.float32)
        codec = {k: jax.tree.map(lambda g: g * on, v) if k in TRANSFORMS else v
                 for k, v in grads["codec"].items()}
        grads = {**grads, "codec": codec}
    metrics["grad_norm"] = optax.tree.norm(grads)
    return apply_gradients(state, grads, cfg.train), metrics


def jit_train_step(cfg: Config):
    """jit(train_step) with the state donated: fn(state, x, key, lpips_params=None)."""
    return jax.jit(functools.partial(train_step, cfg=cfg), donate_argnums=(0,))


def export(directory, cfg: Config, state: TrainState) -> None:
    """Writes a model directory from a training state: codec weights, coding tables, U-Net."""
    params = jax.device_get(state.params)
    checkpoint.export_model(directory, cfg, params["codec"],
                            entropy_coding.build_tables(cfg.codec, params["codec"]),
                            step=int(state.step), unet=params.get("unet"))
