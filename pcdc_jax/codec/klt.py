"""Starting the codec at the Karhunen-Loeve transform of 16x16 blocks.

A latent of 16 * 16 * 3 = 768 channels per block can hold the whole block; the linear block paths
of the encoder and decoder (`CodecConfig.linear_skip`) can then be an orthonormal transform and
its inverse. Initialised at the KLT estimated from training crops (the eigenvectors of the block
covariance, by decreasing variance), with the convolutional paths' output layers at zero, a fresh
codec starts as a classical transform coder: uniform quantization of decorrelated coefficients,
which on Kodak already beats JPEG in PSNR under per-channel entropy coding (BENCHMARKS.md).
Training then only has to learn the hyperprior and what the nonlinear layers add.

    mean, basis = klt.block_klt(crops)                       # crops [N, H, W, 3] in [0, 1]
    params = klt.init_linear_paths(params, cfg.codec, mean, basis, step=40 / 255)
"""
from __future__ import annotations

import jax
import numpy as np

from pcdc_jax.config import CodecConfig

BLOCK = 16


def block_klt(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, H, W, 3] in [0, 1] (H, W multiples of 16) -> (mean [768], basis [768, 768]).

    Blocks are flattened as `layers.space_to_depth` does (row, column, channel); basis[:, k] is
    the k-th eigenvector of their covariance, by decreasing eigenvalue (float64, orthonormal).
    """
    x = np.asarray(images, np.float64)
    n, h, w, c = x.shape
    if h % BLOCK or w % BLOCK:
        raise ValueError(f"crops of {h}x{w} are not multiples of {BLOCK}")
    blocks = (x.reshape(n, h // BLOCK, BLOCK, w // BLOCK, BLOCK, c)
              .transpose(0, 1, 3, 2, 4, 5).reshape(-1, BLOCK * BLOCK * c))
    if len(blocks) < blocks.shape[1]:
        raise ValueError(f"{len(blocks)} blocks are too few to estimate a {blocks.shape[1]}-point KLT")
    mean = blocks.mean(0)
    values, vectors = np.linalg.eigh(np.cov(blocks - mean, rowvar=False))
    return mean, vectors[:, np.argsort(values)[::-1]]


def init_linear_paths(params, cfg: CodecConfig, mean: np.ndarray, basis: np.ndarray, step: float):
    """Codec parameters whose linear block paths are the KLT and its inverse.

    Encoder: y = (block(x) - mean) @ basis[:, :M] / step, so one quantization step of the middle
    level (step 1 in y) is `step` in pixel units of [0, 1]; decoder: the inverse. The encoder's
    `down_out` and the decoder's `up_out` start at zero, so the convolutional paths add nothing
    until training gives them something to add, and so does the hyper decoder's mean.
    Other parameters are kept.
    """
    m = cfg.latent_channels
    if not cfg.linear_skip:
        raise ValueError("a KLT start needs the linear block paths (codec.linear_skip)")
    if m > basis.shape[1]:
        raise ValueError(f"{m} latent channels exceed the {basis.shape[1]} of a 16x16 block")
    v = basis[:, :m]
    enc, dec = dict(params["encoder"]), dict(params["decoder"])
    # the encoder sees x - 0.5 and the decoder adds 0.5 back
    centre = mean - 0.5
    enc["block_linear"] = {"kernel": v / step, "bias": -(centre @ v) / step}
    dec["block_linear"] = {"kernel": v.T * step, "bias": centre}
    enc["down_out"] = jax.tree.map(np.zeros_like, enc["down_out"])
    dec["up_out"] = jax.tree.map(np.zeros_like, dec["up_out"])
    # The predicted mean starts at 0, where every coefficient but the DC is centred: a random
    # mean shifts the quantization grid of the many near-zero coefficients off zero, which costs
    # up to step**2 / 12 on each of them.
    hyper = dict(params["hyper_decoder"])
    last = dict(hyper["conv3"])
    last["kernel"] = np.asarray(last["kernel"]).copy()
    last["kernel"][..., :m] = 0
    last["bias"] = np.asarray(last["bias"]).copy()
    last["bias"][:m] = 0
    hyper["conv3"] = last
    out = dict(params, encoder=enc, decoder=dec, hyper_decoder=hyper)
    return jax.tree.map(lambda new, old: np.asarray(new, np.asarray(old).dtype), out, params)
