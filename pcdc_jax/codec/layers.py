"""Resampling and convolution blocks chosen for training speed on CPU.

DESIGN.md section 5: a strided transposed convolution costs ~20x a 3x3 convolution followed by
depth-to-space on this hardware, so every resolution change here is a pixel (un)shuffle.
"""
from __future__ import annotations

import flax.linen as nn
import jax


def space_to_depth(x: jax.Array, r: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/r, W/r, C*r*r] (pixel unshuffle)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // r, w // r, r * r * c)


def depth_to_space(x: jax.Array, r: int) -> jax.Array:
    """[B, H, W, C*r*r] -> [B, H*r, W*r, C] (pixel shuffle); inverse of space_to_depth."""
    b, h, w, c = x.shape
    c_out = c // (r * r)
    x = x.reshape(b, h, w, r, r, c_out)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * r, w * r, c_out)


def act(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, 0.1)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection."""

    channels: int

    @nn.compact
    def __call__(self, x):
        h = act(nn.Conv(self.channels, (3, 3), name="conv1")(x))
        h = nn.Conv(self.channels, (3, 3), name="conv2", kernel_init=nn.initializers.zeros)(h)
        return x + h


class Down(nn.Module):
    """2x downsampling: space-to-depth then a 3x3 convolution (a 6x6 stride-2 receptive field)."""

    channels: int
    activation: bool = True
    kernel: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.channels, (self.kernel, self.kernel))(space_to_depth(x, 2))
        return act(x) if self.activation else x


class Up(nn.Module):
    """2x upsampling: a 3x3 convolution to 4x channels then depth-to-space."""

    channels: int
    activation: bool = True

    @nn.compact
    def __call__(self, x):
        x = depth_to_space(nn.Conv(4 * self.channels, (3, 3))(x), 2)
        return act(x) if self.activation else x
