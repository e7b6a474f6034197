"""Starting the codec at the Karhunen-Loeve transform of 16x16 blocks.

A latent of 16 * 16 * 3 = 768 channels per block can hold the whole block; the linear block paths
of the encoder and decoder (`CodecConfig.linear_skip`) can then be an orthonormal transform and
its inverse. Initialised at the KLT estimated from training crops (the eigenvectors of the block
covariance, by decreasing variance), with the convolutional paths' output layers at zero, a fresh
codec starts as a classical transform coder: uniform quantization of decorrelated coefficients,
which on Kodak already beats JPEG in PSNR under per-channel entropy coding (BENCHMARKS.md).
The hyper decoder starts near the matching static model: mean 0 and each channel's scale from
its variance, so the first rates are those of a per-channel Gaussian model, not of a random one.
Training then only has to learn what the hyperprior and the nonlinear layers add.

    k = klt.block_klt(crops)                                 # crops [N, H, W, 3] in [0, 1]
    params = klt.init_linear_paths(params, cfg.codec, k, step=40 / 255)
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from pcdc_jax.config import CodecConfig

BLOCK = 16


class Klt(NamedTuple):
    mean: np.ndarray        # [768] mean block
    basis: np.ndarray       # [768, 768] orthonormal; column k is the k-th eigenvector
    variance: np.ndarray    # [768] eigenvalues (each coefficient's variance), decreasing


def to_blocks(images: np.ndarray) -> np.ndarray:
    """[..., H, W, C] (H, W multiples of 16) -> [num_blocks, 16 * 16 * C] float64, each block
    flattened as `layers.space_to_depth` does (row, column, channel)."""
    x = np.asarray(images, np.float64)
    h, w, c = x.shape[-3:]
    if h % BLOCK or w % BLOCK:
        raise ValueError(f"crops of {h}x{w} are not multiples of {BLOCK}")
    x = x.reshape(-1, h // BLOCK, BLOCK, w // BLOCK, BLOCK, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, BLOCK * BLOCK * c)


def from_blocks(blocks: np.ndarray, h: int, w: int) -> np.ndarray:
    """The inverse of `to_blocks` for one image: [num_blocks, 16 * 16 * C] -> [h, w, C]."""
    c = blocks.shape[-1] // (BLOCK * BLOCK)
    x = blocks.reshape(h // BLOCK, w // BLOCK, BLOCK, BLOCK, c).transpose(0, 2, 1, 3, 4)
    return x.reshape(h, w, c)


def sample_crops(dataset, n: int, batch_size: int) -> np.ndarray:
    """The first n crops of a training dataset (its batches of steps 0, 1, ...)."""
    steps = -(-n // batch_size)
    return np.concatenate([dataset.batch(s, batch_size) for s in range(steps)])[:n]


def block_klt(images: np.ndarray) -> Klt:
    """Images [N, H, W, 3] in [0, 1] (H, W multiples of 16) -> the KLT of their 16x16 blocks
    (`to_blocks` order), eigenvectors by decreasing eigenvalue (float64)."""
    blocks = to_blocks(images)
    if len(blocks) < blocks.shape[1]:
        raise ValueError(f"{len(blocks)} blocks are too few to estimate a {blocks.shape[1]}-point KLT")
    mean = blocks.mean(0)
    values, vectors = np.linalg.eigh(np.cov(blocks - mean, rowvar=False))
    order = np.argsort(values)[::-1]
    return Klt(mean, vectors[:, order], np.maximum(values[order], 0.0))


def init_linear_paths(params, cfg: CodecConfig, k: Klt, step: float):
    """Codec parameters whose linear block paths are the KLT and its inverse.

    Encoder: y = (block(x) - mean) @ basis[:, :M] / step, so one quantization step of the middle
    level (step 1 in y) is `step` in pixel units of [0, 1]; decoder: the inverse. The encoder's
    `down_out` and the decoder's `up_out` start at zero, so the convolutional paths add nothing
    until training gives them something to add. The hyper decoder's last layer starts near the
    static model of the coefficients: mean 0 and, in every latent channel, the scale index of its
    standard deviation (plus what the random scale kernel adds). Other parameters are kept.
    """
    m = cfg.latent_channels
    if not cfg.linear_skip:
        raise ValueError("a KLT start needs the linear block paths (codec.linear_skip)")
    if m > k.basis.shape[1]:
        raise ValueError(f"{m} latent channels exceed the {k.basis.shape[1]} of a 16x16 block")
    v = k.basis[:, :m]
    enc, dec = dict(params["encoder"]), dict(params["decoder"])
    # the encoder sees x - 0.5 and the decoder adds 0.5 back
    centre = k.mean - 0.5
    enc["block_linear"] = {"kernel": v / step, "bias": -(centre @ v) / step}
    dec["block_linear"] = {"kernel": v.T * step, "bias": centre}
    enc["down_out"] = jax.tree.map(np.zeros_like, enc["down_out"])
    dec["up_out"] = jax.tree.map(np.zeros_like, dec["up_out"])
    # The predicted mean starts at 0, where every coefficient but the DC is centred (a random mean
    # shifts the quantization grid of the many near-zero coefficients off zero, which costs up to
    # step**2 / 12 on each of them), and the scale at each channel's standard deviation: at the
    # middle level (step 1 in y) a symbol's scale is sigma_y, index 10 ln(sigma_y / scale_min).
    sigma_y = np.sqrt(k.variance[:m]) / step
    t = np.log(np.maximum(sigma_y, 1e-6) / cfg.scale_min) / cfg.scale_log_delta
    t = np.clip(np.round(t), -cfg.num_scales, 2 * cfg.num_scales) - cfg.num_scales // 2
    # The scale half of the kernel keeps its random start: zeroed, it would pass no gradient to
    # the layers below, z would be of no use, and its rate term would shut it off for good.
    hyper = dict(params["hyper_decoder"])
    kernel = np.array(hyper["conv3"]["kernel"])
    kernel[..., :m] = 0
    hyper["conv3"] = {"kernel": kernel, "bias": np.concatenate([np.zeros(m), t])}
    out = dict(params, encoder=enc, decoder=dec, hyper_decoder=hyper)
    return jax.tree.map(lambda new, old: np.asarray(new, np.asarray(old).dtype), out, params)
