"""compress(image, model) -> bytes ; decompress(bytes, model) -> image.

The encoder runs the analysis transform on the device, derives every coding parameter with the
integer hyper decoder on the host, and codes each tile of the latent independently. The decoder
entropy-decodes the tiles on host threads and reconstructs through windows of the canvas
(`diffusion.decode`): the context decoder's x_base, then optionally DDIM with the U-Net.
"""
from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pcdc_jax import checkpoint
from pcdc_jax.allocation import baselines, features, policy as policy_lib
from pcdc_jax.allocation.rates import rate_table_fn
from pcdc_jax.codec import bitstream
from pcdc_jax.codec.entropy_coding import Coder, integer_hyper_decoder
from pcdc_jax.codec.model import Codec
from pcdc_jax.data.images import pad_to_multiple, to_float, to_uint8
from pcdc_jax.diffusion.decode import WindowDecoder
from pcdc_jax.errors import BudgetError, ImageReadError, ModelMismatchError

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default"


def default_model_dir() -> Path:
    return Path(os.environ.get("PCDC_MODEL", DEFAULT_MODEL))


class Analysis(NamedTuple):
    """Encoder-side quantities of one image (host numpy unless noted)."""

    height: int
    width: int
    y: np.ndarray          # float32 [h, w, M]
    z_symbols: np.ndarray  # int32 [h/4, w/4, Cz]
    mu: np.ndarray         # float32 [h, w, M] (exact, from the integer hyper decoder)
    t: np.ndarray          # int32 [h, w, M] integer log-scales
    symbols: np.ndarray    # int32 [K, h, w, M]: symbols of every block at every level
    rates: np.ndarray      # float32 [h * w, K]: exact bits of every block at every level
    z_bits: float          # ideal bits of the z stream
    inside: np.ndarray     # bool [h, w]: block overlaps the image (else it is padding only)
    static: np.ndarray     # float32 [h * w, Fs]: the allocation policy's per-block features
    energy: np.ndarray     # float32 [h * w]: high-frequency energy of each block


class CompressResult(NamedTuple):
    data: bytes
    levels: np.ndarray     # uint8 [h, w]
    estimated_bits: float  # rate table + z bits (entropy-coded payload only)
    payload_bits: int      # actual bits of the z and y streams
    policy: str = "uniform"  # the allocation that chose the levels


POLICIES = ("ppo", "uniform", "greedy", "hf")


class Runtime:
    """A loaded model with its jitted transforms, coder and integer hyper decoder."""

    def __init__(self, model: checkpoint.Model, threads: int | None = None):
        self.model = model
        self.cfg = model.cfg
        cc = model.cfg.codec
        self.params = jax.device_put(model.params)
        self.coder = Coder(cc, model.tables)
        self.hyper = integer_hyper_decoder(cc, model.tables)
        self.y_bits = jnp.asarray(self.coder.y_bits)
        self.y_half = jnp.asarray(self.coder.y_half.astype(np.int32))
        self.level_steps = np.asarray(cc.level_steps(), np.float32)
        self.exponents = np.asarray(cc.level_exponents, np.int32)
        self._analysis = jax.jit(functools.partial(Codec(cc).apply, method=Codec.analysis))
        self._decoders: dict[int | None, WindowDecoder] = {}
        self._rates = rate_table_fn(cc)
        cfg = self.cfg
        self._features = jax.jit(lambda x, y, mu, t, s, r: (
            features.static(x, y, mu, t, s, r, cfg), features.hf_energy(x)))
        self._rollout = jax.jit(functools.partial(policy_lib.rollout, cfg=cfg, greedy=True))
        self._adapt = None
        self.pool = concurrent.futures.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1))

    @property
    def num_levels(self) -> int:
        return self.cfg.codec.num_levels

    @property
    def has_diffusion(self) -> bool:
        return self.model.unet is not None

    @property
    def has_policy(self) -> bool:
        return self.model.policy is not None

    @property
    def default_steps(self) -> int:
        """DDIM steps used when none are asked for: the model's default, 0 without a U-Net."""
        return self.cfg.diffusion.default_steps if self.has_diffusion else 0

    def decoder(self, devices: int | None = None) -> WindowDecoder:
        """The window decoder over the first `devices` local devices (all by default)."""
        if devices not in self._decoders:
            self._decoders[devices] = WindowDecoder(self.cfg, self.model.params, self.model.unet, devices)
        return self._decoders[devices]

    # ------------------------------------------------------------------ encoder side
    def analyze(self, image: np.ndarray) -> Analysis:
        """image uint8 [H, W, 3] -> Analysis (rate table included)."""
        image = _check_image(image, self.cfg.container.max_pixels)
        h, w = image.shape[:2]
        x = jnp.asarray(to_float(pad_to_multiple(image, bitstream.GRID)))[None]
        y, z = self._analysis({"params": self.params}, x)
        ms = self.cfg.codec.max_symbol
        z_sym = np.clip(np.round(np.asarray(z[0])), -ms, ms).astype(np.int32)
        mu, t = self.hyper(z_sym)
        symbols, rates = self._rates(y[0], jnp.asarray(mu), jnp.asarray(t), self.y_bits, self.y_half)
        hl, wl = mu.shape[:2]
        inside = np.zeros((hl, wl), bool)
        inside[:math.ceil(h / bitstream.BLOCK), :math.ceil(w / bitstream.BLOCK)] = True
        static, energy = self._features(x[0], y[0], jnp.asarray(mu), jnp.asarray(t), symbols, rates)
        return Analysis(h, w, np.asarray(y[0]), z_sym, mu, t, np.asarray(symbols),
                        np.asarray(rates), self.coder.z_bits_of(z_sym), inside,
                        np.asarray(static), np.asarray(energy).reshape(-1))

    def uniform_levels(self, an: Analysis, level: int) -> np.ndarray:
        """Level `level` on every block that overlaps the image, the coarsest on padding."""
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level must be in 0..{self.num_levels - 1}, got {level}")
        return np.where(an.inside, level, 0).astype(np.uint8)

    def allocate(self, an: Analysis, budget: float, policy: str = "ppo", params=None) -> np.ndarray:
        """Levels uint8 [h, w] whose rate-table bits (y payload) total at most `budget` bits.

        policy: "ppo" (the trained policy, greedy decoding; `params` overrides the model's),
        "uniform" (CDC), "greedy" (Lagrangian on the latent-domain distortion proxy) or "hf"
        (high-frequency energy heuristic). ValueError if the budget is below the coarsest level.
        """
        inside = an.inside.reshape(-1)
        if policy == "uniform":
            flat = baselines.uniform(an.rates, inside, budget)
        elif policy == "hf":
            flat = baselines.hf(an.rates, inside, budget, an.energy, level_steps=self.level_steps)
        elif policy == "greedy":
            dist = baselines.distortion_proxy(an.y, an.mu, an.symbols, self.level_steps)
            flat = baselines.greedy(an.rates, dist, inside, budget)
        elif policy == "ppo":
            params = self.model.policy if params is None else params
            if params is None:
                raise ValueError("this model has no trained allocation policy; use --policy "
                                 "uniform, greedy or hf")
            if budget < baselines.coarsest_cost(an.rates, inside):
                raise ValueError(f"budget of {budget:.0f} bits is below the coarsest level's cost")
            env = policy_lib.make_env(an.static, an.rates, inside, budget)
            if int(policy_lib.coarsest_bits(env)) > int(env.budget):
                return self.uniform_levels(an, 0)   # fits only before rounding rates up to bits
            flat = np.asarray(self._rollout(params, env, jax.random.PRNGKey(0)).action, np.uint8)
        else:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        return flat.reshape(an.inside.shape)

    def adapt(self, image: np.ndarray, target_bpp: float, steps: int, seed: int = 0):
        """Test-time adaptation (PCDC): `steps` PPO-Lagrangian updates of the model's policy on
        crops of this image at its target rate, rewarded by the real decoder. Returns the
        adapted policy parameters (the model's are unchanged)."""
        from pcdc_jax.allocation import ppo, training
        if not self.has_policy:
            raise ValueError("this model has no trained allocation policy to adapt")
        if self._adapt is None:
            fr = training.load_frozen(self.model, self.y_bits, self.y_half, self.cfg)
            self._adapt = (jax.device_put(fr), training.jit_train_step(self.cfg))
        fr, step = self._adapt
        x = jnp.asarray(to_float(pad_to_multiple(image, bitstream.GRID)))
        state = ppo.init_state(self.cfg, self.model.policy)
        key = jax.random.PRNGKey(seed)
        for i in range(steps):
            crops = training.random_crops(x, jax.random.fold_in(key, 2 * i), self.cfg)
            state, _ = step(state, crops, jax.random.fold_in(key, 2 * i + 1), fr,
                            jnp.full((crops.shape[0],), target_bpp, jnp.float32))
        return jax.device_get(state.params)

    def estimate_bits(self, an: Analysis, levels: np.ndarray) -> float:
        hl, wl = levels.shape
        per_block = an.rates[np.arange(hl * wl), levels.ravel().astype(np.int64)]
        return float(per_block.sum() + an.z_bits)

    def selected_symbols(self, an: Analysis, levels: np.ndarray) -> np.ndarray:
        """int32 [h, w, M]: each block's symbols at its level."""
        return np.take_along_axis(an.symbols, levels[None, :, :, None].astype(np.int64), 0)[0]

    def encode(self, an: Analysis, levels: np.ndarray, metadata: dict | None = None) -> CompressResult:
        """Entropy-codes the analysis at a level map into a .pcdc file."""
        levels = np.asarray(levels, np.uint8)
        symbols = self.selected_symbols(an, levels)
        index = self.scale_index(an.t, levels)
        tiles = bitstream.tile_grid(*levels.shape, self.cfg.container.tile_latent)
        streams = list(self.pool.map(
            lambda sl: (bitstream.symbols_crc(symbols[sl]), self.coder.encode_y(symbols[sl], index[sl])),
            tiles))
        z_stream = self.coder.encode_z(an.z_symbols)
        c = bitstream.Container(an.height, an.width, self.cfg.container.tile_latent, self.num_levels,
                                self.model.fingerprint, levels, z_stream, streams, metadata or {})
        payload = 8 * (len(z_stream) + sum(len(s) for _, s in streams))
        return CompressResult(bitstream.pack(c), levels, self.estimate_bits(an, levels), payload)

    def scale_index(self, t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Exact integer scale index of every element (same rule as prior.scale_index)."""
        e = self.exponents[levels.astype(np.int64)][..., None]
        return np.clip(t - e, 0, self.cfg.codec.num_scales - 1)

    def dequantize(self, symbols: np.ndarray, mu: np.ndarray, levels: np.ndarray) -> np.ndarray:
        return mu + self.level_steps[levels.astype(np.int64)][..., None] * symbols.astype(np.float32)

    # ------------------------------------------------------------------ decoder side
    def parse(self, data: bytes) -> bitstream.Container:
        return bitstream.unpack(data, max_pixels=self.cfg.container.max_pixels,
                                fingerprint=self.model.fingerprint, num_levels=self.num_levels)

    def decode_latent(self, c: bitstream.Container) -> tuple[np.ndarray, np.ndarray]:
        """Container -> (symbols int32 [h, w, M], mu float32 [h, w, M]) after every check."""
        hl, wl = c.latent_shape
        zs = (hl // 4, wl // 4, self.cfg.codec.hyper_channels)
        z_sym = self.coder.decode_z(c.z_stream, zs)
        mu, t = self.hyper(z_sym)
        index = self.scale_index(t, c.levels)
        symbols = np.empty(index.shape, np.int32)
        tiles = bitstream.tile_grid(hl, wl, c.tile_latent)

        def work(i):
            sl = tiles[i]
            s = self.coder.decode_y(c.tiles[i][1], index[sl])
            if bitstream.symbols_crc(s) != c.tiles[i][0]:
                raise ModelMismatchError(
                    f"tile {i}: decoded symbols fail their checksum (model or platform mismatch)")
            symbols[sl] = s

        list(self.pool.map(work, range(len(tiles))))
        return symbols, mu

    def latent(self, c: bitstream.Container) -> np.ndarray:
        """The dequantized latent y_hat float32 [h, w, M] of a parsed file (host work only)."""
        symbols, mu = self.decode_latent(c)
        return self.dequantize(symbols, mu, c.levels)

    def synthesize(self, y_hat: np.ndarray, levels: np.ndarray, height: int, width: int, *,
                   steps: int = 0, seed: int = 0, eta: float | None = None,
                   t_start: float | None = None, batch: int | None = None,
                   devices: int | None = None) -> np.ndarray:
        """y_hat [h, w, M] -> uint8 image [height, width, 3]: x_base (steps=0, the context
        decoder) or DDIM with the diffusion U-Net, through windows sharded over the devices."""
        x = self.decoder(devices).decode(y_hat, levels, steps=steps, seed=seed, eta=eta,
                                         t_start=t_start, batch=batch)
        return to_uint8(x[:height, :width])


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> Runtime:
    return Runtime(checkpoint.load_model(path))


def load(model_dir: str | os.PathLike | None = None) -> Runtime:
    """Loads (and caches) a model directory; default: $PCDC_MODEL or the shipped model."""
    return _load_cached(str(Path(model_dir or default_model_dir()).resolve()))


def _check_image(image: np.ndarray, max_pixels: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ImageReadError(f"expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ImageReadError(f"empty image {w}x{h}")
    if h * w > max_pixels:
        raise ImageReadError(f"image {w}x{h} exceeds the limit of {max_pixels} pixels")
    return image


def budget_bytes(height: int, width: int, ratio: float | None = None, bpp: float | None = None) -> int:
    """Largest file size (bytes) meeting a compression ratio (vs 24-bit RGB) or a bpp."""
    if (ratio is None) == (bpp is None):
        raise ValueError("give exactly one of ratio and bpp")
    if ratio is not None:
        if not ratio > 0 or not math.isfinite(ratio):
            raise ValueError(f"ratio must be a positive number, got {ratio}")
        return int(math.floor(3 * height * width / ratio))
    if not bpp > 0 or not math.isfinite(bpp):
        raise ValueError(f"bpp must be a positive number, got {bpp}")
    return int(math.floor(bpp * height * width / 8))


def compress(image: np.ndarray, runtime: Runtime, *, level: int | None = None,
             ratio: float | None = None, bpp: float | None = None, max_bytes: int | None = None,
             policy: str | None = None, adapt_steps: int = 0, metadata: dict | None = None) -> CompressResult:
    """Compresses uint8 [H, W, 3].

    With `level`, every block uses that level. With `ratio`, `bpp` or `max_bytes` (one of them),
    the file never exceeds the budget (BudgetError if even the coarsest level does not fit) and `policy` allocates the levels
    per block: "ppo" (the model's trained policy; the default when it has one), "uniform" (the
    finest uniform level that fits; the default otherwise), "greedy" or "hf" (baselines).
    adapt_steps > 0 first adapts the PPO policy to this image (test-time adaptation). Without
    any budget or level, the finest level.
    """
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if adapt_steps < 0:
        raise ValueError(f"adapt_steps must be >= 0, got {adapt_steps}")
    if sum(b is not None for b in (ratio, bpp, max_bytes)) > 1:
        raise ValueError("give one budget: ratio, bpp or max_bytes")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes}")
    an = runtime.analyze(image)
    if ratio is None and bpp is None and max_bytes is None:
        if policy is not None or adapt_steps:
            raise ValueError("a policy allocates levels under a budget: give --ratio or --bpp")
        return runtime.encode(an, runtime.uniform_levels(
            an, runtime.num_levels - 1 if level is None else level), metadata)
    if level is not None:
        raise ValueError("give either a level or a budget (ratio / bpp), not both")
    policy = policy or ("ppo" if runtime.has_policy else "uniform")
    if adapt_steps and policy != "ppo":
        raise ValueError("test-time adaptation (adapt_steps) applies to the ppo policy")
    limit = max_bytes if max_bytes is not None else budget_bytes(an.height, an.width, ratio, bpp)
    coarsest = runtime.encode(an, runtime.uniform_levels(an, 0), metadata)
    if len(coarsest.data) > limit:
        n = len(coarsest.data)
        raise BudgetError(
            f"cannot fit {an.width}x{an.height} in {limit} bytes: the coarsest level needs {n} "
            f"bytes (ratio {3 * an.height * an.width / n:.1f}, "
            f"{8 * n / (an.height * an.width):.3f} bpp)", n, 3 * an.height * an.width / n)
    if policy == "uniform":
        return _finest_uniform(an, runtime, limit, coarsest, metadata)
    # Bits of the file beyond the y payload's rate-table estimate (header, z stream, level map,
    # coder flushes), measured on the coarsest file; a level map that compresses worse, or a
    # coder that overshoots, costs a retry with a margin.
    side = 8 * len(coarsest.data) - float(an.rates[:, 0].sum())
    params = None
    if adapt_steps:
        target = (8 * limit - side) / an.rates.shape[0] / bitstream.BLOCK ** 2
        params = runtime.adapt(image, target, adapt_steps)
    margin = 0.0
    for _ in range(4):
        budget = 8 * limit - side - margin
        if budget < float(an.rates[:, 0].sum()):
            break
        result = runtime.encode(an, runtime.allocate(an, budget, policy, params), metadata)
        if len(result.data) <= limit:
            return result._replace(policy=policy)
        margin += 8 * (len(result.data) - limit) + 64
    return _finest_uniform(an, runtime, limit, coarsest, metadata)


def _finest_uniform(an: Analysis, runtime: Runtime, limit: int, coarsest: CompressResult,
                    metadata) -> CompressResult:
    """The finest uniform level whose file fits `limit` bytes (the coarsest does)."""
    for k in range(runtime.num_levels - 1, 0, -1):
        levels = runtime.uniform_levels(an, k)
        if runtime.estimate_bits(an, levels) / 8 > limit:
            continue   # the payload alone is over budget; no need to code it
        result = runtime.encode(an, levels, metadata)
        if len(result.data) <= limit:
            return result
    return coarsest


def decompress(data: bytes | bitstream.Container, runtime: Runtime, *, steps: int | None = None, seed: int = 0,
               eta: float | None = None, t_start: float | None = None, batch: int | None = None,
               devices: int | None = None) -> np.ndarray:
    """.pcdc bytes (or the file already parsed by `runtime.parse`) -> uint8 [H, W, 3].

    steps: DDIM steps of the diffusion decoder (default: the model's; 0 gives the context
    decoder's x_base). seed: noise seed (same seed, same image on any device count and batch).
    eta, t_start: DDIM's eta and start time (default: the model's; t_start < 1 refines x_base
    noised to that time instead of sampling from pure noise)
    batch: windows per sampling call; devices: how many local devices to shard them over.
    """
    steps = runtime.default_steps if steps is None else steps
    c = data if isinstance(data, bitstream.Container) else runtime.parse(data)
    return runtime.synthesize(runtime.latent(c), c.levels, c.height, c.width,
                              steps=steps, seed=seed, eta=eta, t_start=t_start, batch=batch,
                              devices=devices)


def reconstruct(an: Analysis, levels: np.ndarray, runtime: Runtime, **decode) -> np.ndarray:
    """What the model decodes without entropy coding, from the analysis at a level map.

    `decode`: steps, seed, eta, t_start, batch, devices as in `decompress` (default steps=0: x_base).
    """
    levels = np.asarray(levels, np.uint8)
    y_hat = runtime.dequantize(runtime.selected_symbols(an, levels), an.mu, levels)
    return runtime.synthesize(y_hat, levels, an.height, an.width, **decode)
