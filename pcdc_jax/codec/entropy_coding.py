"""Entropy coding with constriction under integer frequency tables stored with the model.

Tables (built once by `build_tables`, stored in the model's inference item, never recomputed):
  z_freq [Cz, Lz] int32, z_offset [Cz], z_length [Cz]: per-channel tables of the factorized prior
      for z symbols offset..offset+length-1; entry `length` is the escape symbol.
  y_freq [S, Ly] int32, y_half [S]: per scale index i, symbols -L..L (L = y_half[i]) at entries
      0..2L; entry 2L+1 is the escape symbol.
  hd/<layer>/kernel|bias int32: the integer hyper decoder.
Frequencies sum to 2**cdf_precision and are >= 1, so every in-range symbol and the escape are
codable. An escaped value codes its sign, its overflow magnitude's bit length (5 bits) and the
bits below the leading one with uniform models: exact integer arithmetic end to end.

Within a stream, symbols are grouped by table (channel for z, scale index for y) in raster order;
the decoder knows every element's table before decoding, so the grouping needs no side info.
"""
from __future__ import annotations

import constriction
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr, ndtri

from pcdc_jax.codec.prior import FactorizedPrior, IntegerHyperDecoder, scale_table
from pcdc_jax.config import CodecConfig
from pcdc_jax.errors import PCDCFormatError

ESCAPE_NBITS_SIZE = 32  # bit length of an overflow magnitude, coded uniformly (5 bits)


# ----------------------------------------------------------------------------- table building

def quantize_pmf(pmf: np.ndarray, precision: int) -> np.ndarray:
    """Float pmf (escape last) -> int32 frequencies >= 1 summing to 2**precision."""
    total = 1 << precision
    pmf = np.maximum(np.asarray(pmf, np.float64), 0.0)
    pmf = pmf / pmf.sum()
    freq = np.maximum(1, np.floor(pmf * (total - len(pmf)) + 0.5).astype(np.int64))
    diff = total - int(freq.sum())
    # Move the remainder onto the most likely symbols (never below 1).
    order = np.argsort(-freq, kind="stable")
    i = 0
    while diff != 0:
        j = order[i % len(order)]
        d = max(diff, 1 - int(freq[j])) if diff < 0 else diff
        freq[j] += d
        diff -= d
        i += 1
    return freq.astype(np.int32)


def gaussian_tables(cfg: CodecConfig) -> tuple[np.ndarray, np.ndarray]:
    """Tables of the discretized N(0, sigma_i) for every entry of the scale table."""
    sigmas = scale_table(cfg)
    tail = -float(ndtri(cfg.tail_mass / 2))
    halves = np.ceil(tail * sigmas).astype(np.int32)
    width = int(2 * halves.max() + 2)
    freq = np.zeros((len(sigmas), width), np.int32)
    for i, (s, L) in enumerate(zip(sigmas, halves)):
        v = np.arange(-L, L + 1, dtype=np.float64)
        pmf = ndtr((v + 0.5) / s) - ndtr((v - 0.5) / s)
        esc = 2.0 * ndtr(-(L + 0.5) / s)
        freq[i, :2 * L + 2] = quantize_pmf(np.append(pmf, esc), cfg.cdf_precision)
    return freq, halves


def z_tables(cfg: CodecConfig, prior_params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel tables of the learned factorized prior over the integers.

    Each channel keeps the smallest range [lo, hi] leaving at most tail_mass/2 outside per side.
    """
    r = cfg.z_table_range
    v = jnp.arange(-r, r + 1, dtype=jnp.float32)[:, None] * jnp.ones((1, cfg.hyper_channels))
    prior = FactorizedPrior(cfg.hyper_channels)

    def cdf(at):
        logits = prior.apply({"params": prior_params}, at, method=FactorizedPrior.cdf_logits)
        return np.asarray(jax.nn.sigmoid(logits.astype(jnp.float32)), np.float64).T  # [Cz, 2r+1]

    pmf = np.asarray(prior.apply({"params": prior_params}, v), np.float64).T
    below, above = cdf(v - 0.5), 1.0 - cdf(v + 0.5)
    half_tail = cfg.tail_mass / 2
    rows, offsets, lengths = [], [], []
    for c in range(cfg.hyper_channels):
        lo = max(int(np.searchsorted(below[c], half_tail, side="right")) - 1, 0)
        ok = np.flatnonzero(above[c] <= half_tail)
        hi = max(int(ok[0]) if len(ok) else 2 * r, lo)
        p = pmf[c, lo:hi + 1]
        rows.append(quantize_pmf(np.append(p, max(below[c, lo] + above[c, hi], 1e-12)),
                                 cfg.cdf_precision))
        offsets.append(lo - r)
        lengths.append(hi - lo + 1)
    freq = np.zeros((cfg.hyper_channels, max(len(x) for x in rows)), np.int32)
    for c, row in enumerate(rows):
        freq[c, :len(row)] = row
    return freq, np.asarray(offsets, np.int32), np.asarray(lengths, np.int32)


def build_tables(cfg: CodecConfig, params) -> dict[str, np.ndarray]:
    """All integer coding tables, from the trained parameters (done once, stored with the model)."""
    params = jax.device_get(params)
    y_freq, y_half = gaussian_tables(cfg)
    z_freq, z_offset, z_length = z_tables(cfg, params["z_prior"])
    tables = {"y_freq": y_freq, "y_half": y_half, "z_freq": z_freq, "z_offset": z_offset,
              "z_length": z_length}
    hd = IntegerHyperDecoder.from_params(cfg, params["hyper_decoder"])
    for k, w in hd.weights.items():
        if np.abs(w).max() >= 2**31:
            raise ValueError(f"hyper decoder {k} does not fit int32")
        tables[f"hd/{k}"] = w.astype(np.int32)
    return tables


def integer_hyper_decoder(cfg: CodecConfig, tables) -> IntegerHyperDecoder:
    return IntegerHyperDecoder(cfg, {k[3:]: np.asarray(v, np.float64)
                                     for k, v in tables.items() if k.startswith("hd/")})


# ----------------------------------------------------------------------------- bit costs

def bits_table(freq: np.ndarray, precision: int) -> np.ndarray:
    """-log2 of each table entry's probability (0 where the entry is unused)."""
    with np.errstate(divide="ignore"):
        b = precision - np.log2(np.maximum(freq, 1).astype(np.float64))
    return np.where(freq > 0, b, 0.0).astype(np.float32)


def escape_extra_bits(mag):
    """Bits after the escape symbol: sign + 5-bit length + (length - 1) low bits. jnp or np."""
    xp = jnp if isinstance(mag, jax.Array) else np
    nbits = _bit_length(mag)
    return 1 + 5 + xp.maximum(nbits - 1, 0)


def _bit_length(mag):
    if isinstance(mag, jax.Array):
        return 32 - jax.lax.clz(mag.astype(jnp.int32))
    mag = np.asarray(mag, np.int64)
    out = np.zeros(mag.shape, np.int64)
    nz = mag > 0
    out[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    return out


def y_symbol_bits(symbols, index, y_bits, y_half):
    """Exact coded bits of each y symbol given its scale index (jnp; used by rate tables)."""
    half = y_half[index]
    inside = jnp.abs(symbols) <= half
    pos = jnp.where(inside, symbols + half, 2 * half + 1)
    bits = y_bits[index, pos]
    mag = jnp.abs(symbols) - half - 1
    return bits + jnp.where(inside, 0.0, escape_extra_bits(jnp.maximum(mag, 0)).astype(jnp.float32))


# ----------------------------------------------------------------------------- coding

class Coder:
    """Encodes and decodes z and y streams with one model's tables. Thread-safe for decoding."""

    def __init__(self, cfg: CodecConfig, tables: dict[str, np.ndarray]):
        self.cfg = cfg
        self.precision = cfg.cdf_precision
        self.y_freq = np.asarray(tables["y_freq"])
        self.y_half = np.asarray(tables["y_half"]).astype(np.int64)
        self.z_freq = np.asarray(tables["z_freq"])
        self.z_offset = np.asarray(tables["z_offset"]).astype(np.int64)
        self.z_length = np.asarray(tables["z_length"]).astype(np.int64)
        self.y_bits = bits_table(self.y_freq, self.precision)
        self.z_bits = bits_table(self.z_freq, self.precision)
        self._y_models = [self._model(self.y_freq[i, :2 * h + 2]) for i, h in enumerate(self.y_half)]
        self._z_models = [self._model(self.z_freq[c, :n + 1]) for c, n in enumerate(self.z_length)]

    def _model(self, freq):
        return constriction.stream.model.Categorical(
            freq.astype(np.float64) / float(1 << self.precision), perfect=False)

    # -- generic grouped coding: element e uses table tab[e]; value v[e] is its table position
    #    or the escape position with (sign, magnitude) coded afterwards.
    @staticmethod
    def _encode(enc, models, tab, pos, esc_sign, esc_mag):
        order = np.argsort(tab, kind="stable")
        tab_s, pos_s = tab[order], pos[order]
        bounds = np.flatnonzero(np.diff(tab_s)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(tab_s)]):
            if stop > start:
                enc.encode(pos_s[start:stop].astype(np.int32), models[tab_s[start]])
        _encode_escapes(enc, esc_sign, esc_mag)

    @staticmethod
    def _decode(dec, models, tab):
        order = np.argsort(tab, kind="stable")
        tab_s = tab[order]
        pos = np.empty(len(tab), np.int64)
        bounds = np.flatnonzero(np.diff(tab_s)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(tab_s)]):
            if stop > start:
                pos[order[start:stop]] = dec.decode(models[tab_s[start]], int(stop - start))
        return pos

    def encode_z(self, z_sym: np.ndarray) -> bytes:
        """z_sym int [hz, wz, Cz] -> bytes."""
        z = z_sym.reshape(-1, z_sym.shape[-1]).astype(np.int64)
        ch = np.broadcast_to(np.arange(z.shape[1]), z.shape).ravel()
        v = z.ravel() - self.z_offset[ch]
        n = self.z_length[ch]
        inside = (v >= 0) & (v < n)
        pos = np.where(inside, v, n)
        esc = ~inside
        sign = (v[esc] < 0).astype(np.int64)
        mag = np.where(v[esc] < 0, -v[esc] - 1, v[esc] - n[esc])
        enc = constriction.stream.queue.RangeEncoder()
        self._encode(enc, self._z_models, ch, pos, sign, mag)
        return enc.get_compressed().tobytes()

    def decode_z(self, data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        hz, wz, cz = shape
        ch = np.broadcast_to(np.arange(cz), (hz * wz, cz)).ravel()
        dec = constriction.stream.queue.RangeDecoder(_words(data))
        pos = self._decode(dec, self._z_models, ch)
        n = self.z_length[ch]
        esc = pos == n
        sign, mag = _decode_escapes(dec, int(esc.sum()))
        v = pos.copy()
        v[esc] = np.where(sign == 1, -mag - 1, n[esc] + mag)
        return (v + self.z_offset[ch]).reshape(hz, wz, cz).astype(np.int32)

    def encode_y(self, symbols: np.ndarray, index: np.ndarray) -> bytes:
        """symbols, scale index: int [..., M] of one tile -> bytes."""
        s = symbols.ravel().astype(np.int64)
        idx = index.ravel().astype(np.int64)
        half = self.y_half[idx]
        inside = np.abs(s) <= half
        pos = np.where(inside, s + half, 2 * half + 1)
        esc = ~inside
        sign = (s[esc] < 0).astype(np.int64)
        mag = np.abs(s[esc]) - half[esc] - 1
        enc = constriction.stream.queue.RangeEncoder()
        self._encode(enc, self._y_models, idx, pos, sign, mag)
        return enc.get_compressed().tobytes()

    def decode_y(self, data: bytes, index: np.ndarray) -> np.ndarray:
        idx = index.ravel().astype(np.int64)
        dec = constriction.stream.queue.RangeDecoder(_words(data))
        pos = self._decode(dec, self._y_models, idx)
        half = self.y_half[idx]
        esc = pos == 2 * half + 1
        sign, mag = _decode_escapes(dec, int(esc.sum()))
        s = pos - half
        s[esc] = np.where(sign == 1, -1, 1) * (half[esc] + 1 + mag)
        return s.reshape(index.shape).astype(np.int32)

    def z_bits_of(self, z_sym: np.ndarray) -> float:
        """Ideal bits of z symbols under the tables (what the range coder spends, to ~0.1%)."""
        z = z_sym.reshape(-1, z_sym.shape[-1]).astype(np.int64)
        ch = np.broadcast_to(np.arange(z.shape[1]), z.shape)
        v = z - self.z_offset[ch]
        n = self.z_length[ch]
        inside = (v >= 0) & (v < n)
        bits = self.z_bits[ch, np.where(inside, v, n)]
        mag = np.where(v < 0, -v - 1, v - n)
        return float(bits.sum() + np.where(inside, 0, escape_extra_bits(np.maximum(mag, 0))).sum())


def _words(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise PCDCFormatError("entropy-coded stream length is not a multiple of 4 bytes")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def _encode_escapes(enc, sign: np.ndarray, mag: np.ndarray) -> None:
    if len(sign) == 0:
        return
    uniform = constriction.stream.model.Uniform()
    nbits = _bit_length(mag)
    enc.encode(sign.astype(np.int32), constriction.stream.model.Uniform(2))
    enc.encode(nbits.astype(np.int32), constriction.stream.model.Uniform(ESCAPE_NBITS_SIZE))
    big = nbits >= 2
    if big.any():
        sizes = (1 << (nbits[big] - 1)).astype(np.int32)
        enc.encode((mag[big] - sizes).astype(np.int32), uniform, sizes)


def _decode_escapes(dec, count: int) -> tuple[np.ndarray, np.ndarray]:
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    uniform = constriction.stream.model.Uniform()
    sign = dec.decode(constriction.stream.model.Uniform(2), count).astype(np.int64)
    nbits = dec.decode(constriction.stream.model.Uniform(ESCAPE_NBITS_SIZE), count).astype(np.int64)
    if nbits.max() > 21:
        raise PCDCFormatError("corrupt escape code")
    mag = np.where(nbits == 1, 1, 0).astype(np.int64)
    big = nbits >= 2
    if big.any():
        sizes = (1 << (nbits[big] - 1)).astype(np.int32)
        mag[big] = sizes + dec.decode(uniform, sizes).astype(np.int64)
    return sign, mag
