"""Starting the codec at the Karhunen-Loeve transform of 16x16 blocks.

A latent of 16 * 16 * 3 = 768 channels per block can hold the whole block; the linear block paths
of the encoder and decoder (`CodecConfig.linear_skip`) can then be an orthonormal transform and
its inverse. Initialised at the KLT estimated from training crops (the eigenvectors of the block
covariance, by decreasing variance), with the convolutional paths' output layers at zero, a fresh
codec starts as a classical transform coder: uniform quantization of decorrelated coefficients,
which on Kodak already beats JPEG in PSNR under per-channel entropy coding (BENCHMARKS.md).
The hyper decoder starts near the matching static model: mean 0 and each channel's scale from
its variance, so the first rates are those of a per-channel Gaussian model, not of a random one.
With `codec.hyper_log_input`, `init_hyper_paths` goes further: z starts as each KLT band's local
activity and the scales follow it, a working hyperprior at step 0 (9-11% smaller files than the
static start on Kodak), so that z is worth its bits from the first step and is not shut off.
Training then only has to learn what the hyperprior and the nonlinear layers add.

    k = klt.block_klt(crops)                                 # crops [N, H, W, 3] in [0, 1]
    params = klt.init_linear_paths(params, cfg.codec, k, step=40 / 255)
    params = klt.init_hyper_paths(params, cfg.codec, k, 40 / 255, crops)
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


def _static_scale_bias(cfg: CodecConfig, k: Klt, step: float) -> np.ndarray:
    """The hyper decoder's scale bias (`t_raw`) that puts each latent channel at the scale index of
    its standard deviation at the middle level (step 1 in y): 10 ln(sigma_y / scale_min)."""
    sigma_y = np.sqrt(k.variance[:cfg.latent_channels]) / step
    t = np.log(np.maximum(sigma_y, 1e-6) / cfg.scale_min) / cfg.scale_log_delta
    return np.clip(np.round(t), -cfg.num_scales, 2 * cfg.num_scales) - cfg.num_scales // 2


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
    t = _static_scale_bias(cfg, k, step)
    # The scale half of the kernel keeps its random start: zeroed, it would pass no gradient to
    # the layers below, z would be of no use, and its rate term would shut it off for good.
    hyper = dict(params["hyper_decoder"])
    kernel = np.array(hyper["conv3"]["kernel"])
    kernel[..., :m] = 0
    hyper["conv3"] = {"kernel": kernel, "bias": np.concatenate([np.zeros(m), t])}
    out = dict(params, encoder=enc, decoder=dec, hyper_decoder=hyper)
    return jax.tree.map(lambda new, old: np.asarray(new, np.asarray(old).dtype), out, params)


def activity_groups(m: int, groups: int) -> np.ndarray:
    """Edges of `groups` (or fewer) contiguous KLT channel bands, log-spaced: [0, ..., m]."""
    edges = np.round(np.geomspace(1, m + 1, groups + 1)).astype(int) - 1
    return np.unique(np.concatenate([[0], edges, [m]]))


def init_hyper_paths(params, cfg: CodecConfig, k: Klt, step: float, crops: np.ndarray,
                     groups: int = 16, z_gain: float = 4.0):
    """Codec parameters whose hyperprior starts as a working local-activity scale model.

    Needs `cfg.hyper_log_input` and a KLT start (`init_linear_paths`, same `k` and `step`). The
    latent channels are cut into up to `groups` log-spaced KLT bands. z channel g is `z_gain`
    times the predicted deviation of ln(scale) of band g in a 4x4 latent neighbourhood from its
    mean: a least-squares fit on `crops` from the mean of ln(1 + |y|) over band and neighbourhood.
    The hyper decoder turns z_g back into that deviation and adds it to the scale index of each
    channel of band g (in units of `scale_log_delta`), on top of the static start. Without such a
    start z is pure cost (the scales do not depend on it) and training shuts it off for good.

    Each band's signed value travels through the hidden layers as a pair of units, its positive
    and negative parts (what the leaky-ReLU encoder and clipped-ReLU decoder pass exactly), of
    the size of a ln-scale deviation, so the start is as well conditioned as a random one. The
    other z channels start at exactly 0; the other hidden units keep their random weights but
    reach nothing until training gives them an output weight.
    """
    m, c, cz = cfg.latent_channels, cfg.hyper_hidden, cfg.hyper_channels
    if not cfg.hyper_log_input:
        raise ValueError("a local-activity hyperprior start needs codec.hyper_log_input")
    edges = activity_groups(m, min(groups, c // 2, cz))
    bands = list(zip(edges[:-1], edges[1:]))
    n, h, w = crops.shape[0], crops.shape[1] // (4 * BLOCK), crops.shape[2] // (4 * BLOCK)
    if not (h and w):
        raise ValueError(f"crops of {crops.shape[1]}x{crops.shape[2]} are smaller than one z "
                         "position (64x64)")
    crops = crops[:, :h * 4 * BLOCK, :w * 4 * BLOCK]
    y = np.abs((to_blocks(crops) - k.mean) @ k.basis[:, :m] / step)          # [n*4h*4w, m]
    log_mean = np.log1p(y).mean(0)                                          # [m]

    def pooled(v):        # [n*4h*4w, m] -> per z position and band: [n*h*w, bands]
        v = v.reshape(n, h, 4, w, 4, m).mean((2, 4)).reshape(n * h * w, m)
        return np.stack([v[:, a:b].mean(1) for a, b in bands], 1)

    # Per band: the local ln(scale) (half the log of the mean square of y / sigma over band and
    # neighbourhood) regressed on the mean deviation of ln(1 + |y|) from its channel mean.
    feature = pooled(np.log1p(y) - log_mean)
    target = 0.5 * np.log(pooled(y ** 2 / np.maximum((y ** 2).mean(0), 1e-12)) + 1e-12)
    fc, tc = feature - feature.mean(0), target - target.mean(0)
    slope = (fc * tc).mean(0) / np.maximum((fc ** 2).mean(0), 1e-12)
    # At the feature's mean, ln(scale) is the mean local one: below the static (global) one.
    intercept = target.mean(0) - slope * feature.mean(0)

    def conv(tree):
        return {"kernel": np.array(tree["kernel"], np.float64),
                "bias": np.array(tree["bias"], np.float64)}

    def route(layer, sources, unit, weights):
        """Output `unit` of `layer` reads only input channels `sources` (centre tap), no bias."""
        kern = layer["kernel"]
        ctr = kern.shape[0] // 2
        kern[..., unit] = 0
        kern[ctr, ctr, sources, unit] = weights
        layer["bias"][unit] = 0

    # a 2x2 average of +/- pairs after leaky ReLUs: leaky_relu(x) - leaky_relu(-x) = 1.1 x
    pair_mean = np.tile([0.25, -0.25], 4) / 1.1
    he = dict(params["hyper_encoder"])
    conv_in, down0, down1 = (conv(he["conv_in"]), conv(he["down0"]["Conv_0"]),
                             conv(he["down1"]["Conv_0"]))
    down1["kernel"][..., len(bands):] = 0
    down1["bias"][len(bands):] = 0
    hd = dict(params["hyper_decoder"])
    conv0, conv1, conv2, conv3 = (conv(hd[f"conv{i}"]) for i in range(4))
    conv3["kernel"][..., m:] = 0
    conv3["bias"][m:] = _static_scale_bias(cfg, k, step)
    for g, (a, b) in enumerate(bands):
        pos, neg = 2 * g, 2 * g + 1
        subs = [(q * c + pos, q * c + neg) for q in range(4)]    # space-to-depth sub-positions
        for unit, sign in ((pos, 1.0), (neg, -1.0)):
            # encoder: the band's deviation, then its 2x2 averages, as +/- pairs
            route(conv_in, np.arange(m + a, m + b), unit, sign * slope[g] / (b - a))
            conv_in["bias"][unit] = -sign * slope[g] * log_mean[a:b].mean()
            route(down0, np.ravel(subs), unit, sign * pair_mean)
            # decoder: z_g / z_gain as a +/- pair, copied to the 2x2 sub-positions twice
            route(conv0, [g], unit, sign / z_gain)
            for layer in (conv1, conv2):
                for q in range(4):
                    route(layer, [unit], q * c + unit, 1.0)
        route(down1, np.ravel(subs), g, z_gain * pair_mean)
        conv3["kernel"][0, 0, [pos, neg], m + a:m + b] = np.array([[1.0], [-1.0]]) / cfg.scale_log_delta
        conv3["bias"][m + a:m + b] += np.round(intercept[g] / cfg.scale_log_delta)
    he.update(conv_in=conv_in, down0={"Conv_0": down0}, down1={"Conv_0": down1})
    hd.update(conv0=conv0, conv1=conv1, conv2=conv2, conv3=conv3)
    out = dict(params, hyper_encoder=he, hyper_decoder=hd)
    return jax.tree.map(lambda new, old: np.asarray(new, np.asarray(old).dtype), out, params)
