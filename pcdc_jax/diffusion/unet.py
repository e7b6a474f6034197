"""The conditional U-Net denoiser.

Input: the noisy residual r_t [B, H, W, 3], the time t [B] (or [1], shared) in [0, 1], the base image x_base
[B, H, W, 3] and the context decoder's features {stride: [B, H/stride, W/stride, C]} for strides
2, 4, 8 and 16. Output: the predicted clean residual r0 [B, H, W, 3] (CDC's x-parameterization;
the image is x_base + residual_scale * r0).

Built for CPU training speed (DESIGN.md section 5): the first layer is a space-to-depth to stride
2, every resolution change is a pixel (un)shuffle, and there is no normalization over space, so a
window's output depends on its content only through the receptive field and the low-resolution
attention.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdc_jax.codec.layers import Down, Up, act, depth_to_space, space_to_depth
from pcdc_jax.config import DiffusionConfig

STRIDES = (2, 4, 8, 16)


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """t [B] in [0, 1] -> sinusoidal embedding [B, dim] (of 1000 t, as discrete-time DDPM)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeResBlock(nn.Module):
    """Two 3x3 convolutions with a FiLM of the time embedding between them; zero-initialised out."""

    channels: int

    @nn.compact
    def __call__(self, x, temb):
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), name="proj")(x)
        h = nn.Conv(self.channels, (3, 3), name="conv1")(act(x))
        scale, shift = jnp.split(nn.Dense(2 * self.channels, name="film")(temb), 2, axis=-1)
        h = h * (1.0 + scale[:, None, None]) + shift[:, None, None]
        h = nn.Conv(self.channels, (3, 3), name="conv2", kernel_init=nn.initializers.zeros)(act(h))
        return x + h


class Attention(nn.Module):
    """Multi-head self-attention over all positions of a (low-resolution) map, residual."""

    heads: int

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        seq = x.reshape(b, h * w, c)
        out = nn.MultiHeadDotProductAttention(num_heads=self.heads, out_kernel_init=nn.initializers.zeros,
                                              name="mha")(seq, seq)
        return x + out.reshape(b, h, w, c)


class UNet(nn.Module):
    cfg: DiffusionConfig

    @nn.compact
    def __call__(self, r_t, t, x_base, features):
        """-> predicted r0 [B, H, W, 3] (H, W multiples of 16)."""
        cfg = self.cfg
        ch = cfg.unet_channels
        temb = timestep_embedding(t, cfg.time_dim)
        temb = nn.Dense(cfg.time_dim, name="time1")(temb)
        temb = nn.Dense(cfg.time_dim, name="time2")(act(temb))
        h = jnp.concatenate([r_t, 2.0 * x_base - 1.0], axis=-1)
        h = nn.Conv(ch[0], (3, 3), name="conv_in")(space_to_depth(h, 2))
        skips = []
        for i, s in enumerate(STRIDES):
            if i > 0:
                h = Down(ch[i], name=f"down{i}")(h)
            h = h + nn.Conv(ch[i], (1, 1), name=f"cond{s}")(features[s])
            for r in range(cfg.unet_res_blocks):
                h = TimeResBlock(ch[i], name=f"enc{s}_{r}")(h, temb)
            skips.append(h)
        h = TimeResBlock(ch[-1], name="mid0")(h, temb)
        if cfg.attention_heads:
            h = Attention(cfg.attention_heads, name="attn")(h)
            h = TimeResBlock(ch[-1], name="mid1")(h, temb)
        for i in reversed(range(len(STRIDES))):
            h = jnp.concatenate([h, skips[i]], axis=-1)
            for r in range(cfg.unet_res_blocks):
                h = TimeResBlock(ch[i], name=f"dec{STRIDES[i]}_{r}")(h, temb)
            if i > 0:
                h = Up(ch[i - 1], name=f"up{i}")(h)
        out = nn.Conv(12, (3, 3), name="conv_out", kernel_init=nn.initializers.zeros)(act(h))
        return depth_to_space(out, 2)


def init_params(cfg: DiffusionConfig, feature_channels: dict[int, int], key: jax.Array, size: int = 32):
    """Parameters of a fresh U-Net for context features with the given channel counts."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    feats = {s: jnp.zeros((1, size // s, size // s, c), jnp.float32) for s, c in feature_channels.items()}
    # jitted: one compilation instead of one per initializer op
    return jax.jit(UNet(cfg).init)(key, x, jnp.zeros((1,), jnp.float32), x, feats)["params"]


def feature_channels(codec_cfg) -> dict[int, int]:
    """{stride: channels} of the context decoder's features (strides 16, 8, 4, 2)."""
    return dict(zip((16, 8, 4, 2), codec_cfg.decoder_channels))
