"""LPIPS (AlexNet, VGG16; Zhang et al. 2018, v0.1 heads) and DISTS (Ding et al. 2020) in JAX.

Both are written as pure functions of (params, x, y) on float NHWC batches in [0, 1]: jittable,
differentiable, one value per image. Weights: `pcdc_jax.metrics.weights`.

Large images: `lpips_tiled` / `dists_tiled` give the whole-image value of one pair through
overlapping tiles. Each tile carries a halo wider than the deepest tap's receptive field and starts
on a multiple of the networks' total stride (16), so every feature position it keeps is exactly the
one the whole image would give; LPIPS adds up the kept positions' sums, DISTS merges per-channel
means and (co)variances across tiles (Chan et al.'s pairwise update, in float64).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# A network is a list of ops: # ("conv", index, kernel, stride, padding); ("tap",) records the current activation.
_ALEX = [("conv", 0, 11, 4, 2), ("relu",), ("tap",), ("maxpool", 3, 2),
         ("conv", 1, 5, 1, 2), ("relu",), ("tap",), ("maxpool", 3, 2),
         ("conv", 2, 3, 1, 1), ("relu",), ("tap",),
         ("conv", 3, 3, 1, 1), ("relu",), ("tap",),
         ("conv", 4, 3, 1, 1), ("relu",), ("tap",)]


def _vgg(pool):
    ops, i = [], 0
    for n in (2, 2, 3, 3, 3):
        if i:
            ops.append(pool)
        for _ in range(n):
            ops += [("conv", i, 3, 1, 1), ("relu",)]
            i += 1
        ops.append(("tap",))
    return ops


_VGG = _vgg(("maxpool", 2, 2))
_VGG_L2 = _vgg(("l2pool",))     # DISTS: VGG16 with every max-pool replaced by L2 pooling
NETWORKS = {"alex": _ALEX, "vgg": _VGG}

# LPIPS input scaling (from [-1, 1]); DISTS normalises [0, 1] input with the ImageNet statistics.
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)

TILE_STRIDE = 16      # total stride of both backbones: tiles start on multiples of it
TILE_HALO = 128       # > receptive-field radius of the deepest tap (about 100 px for both), x16


def _l2pool(x):
    """DISTS' L2 pooling: sqrt(3x3 Hann-weighted (0.5,1,0.5)^2 / 4 of x^2, stride 2, pad 1) per channel."""
    a = jnp.asarray([0.5, 1.0, 0.5], jnp.float32)
    g = jnp.outer(a, a) / 4.0
    c = x.shape[-1]
    k = jnp.tile(g[:, :, None, None], (1, 1, 1, c))
    y = jax.lax.conv_general_dilated(x * x, k, (2, 2), [(1, 1), (1, 1)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(y + 1e-12)


def _run(ops, params, x):
    taps = []
    for op in ops:
        if op[0] == "conv":
            _, i, _, s, p = op
            x = jax.lax.conv_general_dilated(
                x, params[f"conv{i}/kernel"], (s, s), [(p, p), (p, p)],
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST) + params[f"conv{i}/bias"]
        elif op[0] == "relu":
            x = jax.nn.relu(x)
        elif op[0] == "maxpool":
            _, k, s = op
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), "VALID")
        elif op[0] == "l2pool":
            x = _l2pool(x)
        else:
            taps.append(x)
    return taps


def _tap_strides(ops):
    s, out = 1, []
    for op in ops:
        if op[0] == "conv":
            s *= op[3]
        elif op[0] == "maxpool":
            s *= op[2]
        elif op[0] == "l2pool":
            s *= 2
        elif op[0] == "tap":
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# Per-position terms and their reductions. A mask selects the positions a tile keeps.

def _lpips_maps(params, x, y, net):
    """Per tap: the LPIPS map [N, h, w] (head-weighted squared difference of unit-normalised features)."""
    def feats(v):
        v = (v * 2.0 - 1.0 - _LPIPS_SHIFT) / _LPIPS_SCALE
        return _run(NETWORKS[net], params, v)

    def unit(f):
        return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)

    return [jnp.sum(jnp.square(unit(a) - unit(b)) * params[f"lin{k}"], axis=-1)
            for k, (a, b) in enumerate(zip(feats(x), feats(y)))]


def lpips(params, x, y, net: str = "alex") -> jax.Array:
    """LPIPS distance per image of float NHWC batches in [0, 1] (`params` = weights.load(net))."""
    return sum(jnp.mean(m, axis=(1, 2)) for m in _lpips_maps(params, x, y, net))


def _dists_feats(params, x):
    return [x] + _run(_VGG_L2, params, (x - _IMAGENET_MEAN) / _IMAGENET_STD)


def _moments(fx, fy, mask=None):
    """Per channel over positions (optionally masked): count, means, and centred sums of squares
    and cross-products; each [N, C] (count [N, 1])."""
    if mask is None:
        mask = jnp.ones(fx.shape[1:3], fx.dtype)
    m = mask[None, :, :, None]
    n = jnp.sum(m, axis=(1, 2))
    mx = jnp.sum(fx * m, axis=(1, 2)) / n
    my = jnp.sum(fy * m, axis=(1, 2)) / n
    dx, dy = (fx - mx[:, None, None]) * m, (fy - my[:, None, None]) * m
    return dict(n=n, mx=mx, my=my, sxx=jnp.sum(dx * dx, axis=(1, 2)), syy=jnp.sum(dy * dy, axis=(1, 2)),
                sxy=jnp.sum(dx * dy, axis=(1, 2)))


def _dists_score(dparams, moments, xp=jnp):
    alpha, beta = xp.asarray(dparams["alpha"]), xp.asarray(dparams["beta"])
    wsum = xp.sum(alpha) + xp.sum(beta)
    c1 = c2 = 1e-6
    d1 = d2 = 0.0
    off = 0
    for c, mo in zip(DISTS_CHANNELS, moments):
        a, b = alpha[off:off + c] / wsum, beta[off:off + c] / wsum
        off += c
        mx, my, n = mo["mx"], mo["my"], mo["n"]
        s1 = (2 * mx * my + c1) / (mx * mx + my * my + c1)
        s2 = (2 * mo["sxy"] / n + c2) / (mo["sxx"] / n + mo["syy"] / n + c2)
        d1 = d1 + xp.sum(a * s1, axis=-1)
        d2 = d2 + xp.sum(b * s2, axis=-1)
    return 1.0 - (d1 + d2)


def dists(params, dparams, x, y) -> jax.Array:
    """DISTS per image of float NHWC batches in [0, 1] (`params` = weights.load('vgg'),
    `dparams` = weights.load_dists())."""
    moments = [_moments(a, b) for a, b in zip(_dists_feats(params, x), _dists_feats(params, y))]
    return _dists_score(dparams, moments)


# ---------------------------------------------------------------------------------------------
# Whole-image values of large images through exact overlapping tiles.

def _tap_mask(shape_hw, stride, lo, hi):
    """Positions j of a tap map whose input footprint starts in [lo, hi) (per axis, in tile pixels)."""
    masks = []
    for n, s, a, b in zip(shape_hw, (stride, stride), lo, hi):
        j = jnp.arange(n) * s
        masks.append((j >= a) & (j < b))
    return (masks[0][:, None] & masks[1][None, :]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("net",))
def _lpips_tile(params, x, y, lo, hi, *, net):
    maps = _lpips_maps(params, x, y, net)
    strides = _tap_strides(NETWORKS[net])
    return jnp.stack([jnp.sum(m[0] * _tap_mask(m.shape[1:], s, lo, hi)) for m, s in zip(maps, strides)])


@jax.jit
def _dists_tile(params, x, y, lo, hi):
    strides = [1] + _tap_strides(_VGG_L2)
    return [_moments(a, b, _tap_mask(a.shape[1:3], s, lo, hi))
            for a, b, s in zip(_dists_feats(params, x), _dists_feats(params, y), strides)]


def _tiles(h, w, tile):
    """Yields (cut slices, lo, hi): the input window with halo and the kept region inside it."""
    if tile % TILE_STRIDE:
        raise ValueError(f"tile must be a multiple of {TILE_STRIDE}")
    big = 1 << 30
    for oy in range(0, h, tile):
        for ox in range(0, w, tile):
            cy, cx = max(oy - TILE_HALO, 0), max(ox - TILE_HALO, 0)
            ey, ex = min(oy + tile + TILE_HALO, h), min(ox + tile + TILE_HALO, w)
            hi_y = big if oy + tile >= h else oy + tile - cy
            hi_x = big if ox + tile >= w else ox + tile - cx
            yield (slice(cy, ey), slice(cx, ex)), (oy - cy, ox - cx), (hi_y, hi_x)


def _as_pair(x, y):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError("tiled evaluation takes one image pair at a time")
        x, y = x[0], y[0]
    return x, y


def lpips_tiled(params, x, y, net: str = "alex", tile: int = 512) -> float:
    """Whole-image LPIPS of one pair (HWC or 1HWC, [0, 1]) through exact overlapping tiles."""
    x, y = _as_pair(x, y)
    h, w = x.shape[:2]
    shapes = jax.eval_shape(lambda a, b: _lpips_maps(params, a, b, net),
                            jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
                            jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
    total = np.zeros(len(shapes))
    for sl, lo, hi in _tiles(h, w, tile):
        total += np.asarray(_lpips_tile(params, x[sl][None], y[sl][None], jnp.asarray(lo),
                                        jnp.asarray(hi), net=net), np.float64)
    return float(sum(t / (s.shape[1] * s.shape[2]) for t, s in zip(total, shapes)))


def _merge(a, b):
    """Chan et al.: combine count/mean/centred-sum statistics of two disjoint position sets."""
    n = a["n"] + b["n"]
    dx, dy = b["mx"] - a["mx"], b["my"] - a["my"]
    f = a["n"] * b["n"] / n
    return dict(n=n, mx=a["mx"] + dx * b["n"] / n, my=a["my"] + dy * b["n"] / n,
                sxx=a["sxx"] + b["sxx"] + dx * dx * f, syy=a["syy"] + b["syy"] + dy * dy * f,
                sxy=a["sxy"] + b["sxy"] + dx * dy * f)


def dists_tiled(params, dparams, x, y, tile: int = 512) -> float:
    """Whole-image DISTS of one pair (HWC or 1HWC, [0, 1]) through exact overlapping tiles."""
    x, y = _as_pair(x, y)
    h, w = x.shape[:2]
    acc = None
    for sl, lo, hi in _tiles(h, w, tile):
        mo = jax.device_get(_dists_tile(params, x[sl][None], y[sl][None], jnp.asarray(lo), jnp.asarray(hi)))
        mo = [{k: np.asarray(v, np.float64) for k, v in m.items()} for m in mo]
        # A tile may keep no position of a coarse tap (tiny edge tiles): skip those.
        acc = mo if acc is None else [a if (m["n"] == 0).all() else (m if (a["n"] == 0).all() else _merge(a, m))
                                      for a, m in zip(acc, mo)]
    return float(_dists_score(dparams, acc, xp=np)[0])


def receptive_field(ops) -> int:
    """Receptive field (pixels) of the last tap of a network: checks TILE_HALO in the tests."""
    r, j = 1, 1
    for op in ops:
        if op[0] == "conv":
            r += (op[2] - 1) * j
            j *= op[3]
        elif op[0] == "maxpool":
            r += (op[1] - 1) * j
            j *= op[2]
        elif op[0] == "l2pool":
            r += 2 * j
            j *= 2
    return r

