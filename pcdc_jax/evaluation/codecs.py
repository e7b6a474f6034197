"""Every codec the evaluation compares, behind one interface: the largest file no larger than a
byte budget, and its decoded image.

    codec = codecs.get("hevc")                       # or "pcdc:ppo@16" with a runtime
    data = codec.encode(image, max_bytes)            # bytes, or None if even the lowest quality is larger
    out = codec.decode(data)                         # uint8 HxWx3

Classical codecs search their quality parameter (binary search over a grid, highest quality whose
real file fits), so every method is compared at the same file-size budget:

- ``jpeg``: libjpeg(-turbo) through Pillow, 4:2:0, optimized Huffman tables;
- ``jpeg2000``: OpenJPEG through Pillow, irreversible 9/7 wavelet with the YCbCr component
  transform (Pillow's default leaves RGB untransformed, which costs up to 9 dB), one layer at a
  target rate;
- ``webp``: libwebp through Pillow, method 6;
- ``avif``: libavif (AV1 intra) through Pillow, 4:2:0;
- ``jpegxl``: libjxl through imagecodecs, by Butteraugli distance;
- ``hevc``: HEVC intra (x265 through the ``ffmpeg`` binary), 4:2:0, by QP: the codec inside BPG.
  BPG itself is not packaged for this platform; its file adds a header of a few bytes to the same
  HEVC bitstream, which this measure leaves out.

``pcdc:POLICY[@STEPS]`` is this project's codec (policy ppo, uniform, greedy or hf; STEPS DDIM
steps at decode, default the model's). A codec whose library or binary is missing raises
`Unavailable` from `get` with what is missing.
"""
from __future__ import annotations

import functools
import io
import shutil
import subprocess
from typing import Callable, Sequence

import numpy as np
from PIL import Image, features

CLASSICAL = ("jpeg", "jpeg2000", "webp", "avif", "jpegxl", "hevc")
ANCHOR = "hevc"                              # BD-rates are against this method
LABELS = {"jpeg": "JPEG", "jpeg2000": "JPEG 2000", "webp": "WebP", "avif": "AVIF",
          "jpegxl": "JPEG XL", "hevc": "HEVC intra (x265)"}


class Unavailable(RuntimeError):
    """The codec's library or binary is not installed on this machine."""


class Codec:
    """A codec compared at a byte budget. Subclasses set `name` and `label` and implement
    `encode(image, max_bytes) -> bytes | None` and `decode(data) -> uint8 HxWx3`."""
    name: str
    label: str

    def encode(self, image: np.ndarray, max_bytes: int) -> bytes | None:
        raise NotImplementedError

    def decode(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self):
        return f"<codec {self.name}>"


def best_within(encode_at: Callable[[object], bytes], grid: Sequence, max_bytes: int) -> bytes | None:
    """The file of the highest-quality grid value whose size is at most max_bytes (grid ordered
    from lowest to highest quality; binary search, so sizes are assumed to grow along it), or
    None when even grid[0] is larger."""
    lo, hi, best = 0, len(grid) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = encode_at(grid[mid])
        if len(data) <= max_bytes:
            best, lo = data, mid + 1
        else:
            hi = mid - 1
    return best


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")
    return image


class _Pillow(Codec):
    def __init__(self, name, fmt, feature, grid, options):
        if not features.check(feature):
            raise Unavailable(f"{name}: this Pillow build has no {fmt} support")
        self.name, self.label, self.fmt, self.grid, self.options = name, LABELS[name], fmt, grid, options

    def _save(self, image, value):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, self.fmt, **self.options, quality=value)
        return buf.getvalue()

    def encode(self, image, max_bytes):
        image = _rgb(image)
        return best_within(functools.partial(self._save, image), self.grid, max_bytes)

    def decode(self, data):
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


class _Jpeg2000(_Pillow):
    """One quality layer at a compression ratio (OpenJPEG's rate control); the grid runs from
    ratio 2000 down to 2 geometrically."""

    def __init__(self):
        super().__init__("jpeg2000", "JPEG2000", "jpg_2000", list(np.geomspace(2000, 2, 96)), {})

    def _save(self, image, ratio):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)],
                                    irreversible=True, mct=1)
        return buf.getvalue()


class _JpegXL(Codec):
    name, label = "jpegxl", LABELS["jpegxl"]
    grid = list(np.geomspace(25.0, 0.05, 96))          # Butteraugli distance, low to high quality

    def __init__(self):
        try:
            import imagecodecs
        except ImportError as e:
            raise Unavailable("jpegxl: imagecodecs is not installed") from e
        if not imagecodecs.JPEGXL.available:
            raise Unavailable("jpegxl: this imagecodecs build has no JPEG XL")
        self._ic = imagecodecs

    def encode(self, image, max_bytes):
        image = _rgb(image)
        return best_within(lambda d: self._ic.jpegxl_encode(image, distance=float(d), effort=7),
                           self.grid, max_bytes)

    def decode(self, data):
        return np.asarray(self._ic.jpegxl_decode(data))[..., :3]


class _Hevc(Codec):
    """x265 intra coding of one frame through ffmpeg, QP 51 (lowest quality) to 0. The frame is
    padded to even sides for 4:2:0 and cropped back. Colour conversion is BT.601 full range with
    accurate rounding both ways, so at QP 0 the round trip stays above 40 dB PSNR."""
    name, label = "hevc", LABELS["hevc"]
    grid = list(range(51, -1, -1))
    _SWS = ["-sws_flags", "accurate_rnd+full_chroma_int+bitexact"]

    def __init__(self, ffmpeg: str | None = None):
        self.ffmpeg = ffmpeg or shutil.which("ffmpeg")
        if not self.ffmpeg:
            raise Unavailable("hevc: no ffmpeg binary on PATH (Debian: apt-get install ffmpeg)")
        if "libx265" not in _ffmpeg_encoders(self.ffmpeg):
            raise Unavailable("hevc: this ffmpeg has no libx265 encoder")

    def _run(self, args, data):
        p = subprocess.run([self.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", *args],
                           input=data, capture_output=True)
        if p.returncode:
            raise RuntimeError(f"ffmpeg failed: {p.stderr.decode(errors='replace').strip()[-500:]}")
        return p.stdout

    def _encode_qp(self, padded, qp):
        h, w = padded.shape[:2]
        return self._run(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-i", "-", *self._SWS,
                          "-vf", "scale=out_range=full:out_color_matrix=bt601", "-pix_fmt", "yuv420p", "-color_range", "pc",
                          "-c:v", "libx265", "-preset", "medium", "-x265-params",
                          f"qp={qp}:keyint=1:log-level=error:info=0", "-frames:v", "1", "-f", "hevc", "-"],
                         padded.tobytes())

    def encode(self, image, max_bytes):
        image = _rgb(image)
        h, w = image.shape[:2]
        padded = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        data = best_within(functools.partial(self._encode_qp, padded), self.grid, max_bytes - 4)
        # the container: the image size (2 x uint16) ahead of the Annex-B stream, as BPG's header
        return None if data is None else h.to_bytes(2, "big") + w.to_bytes(2, "big") + data

    def decode(self, data):
        h, w = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big")
        hp, wp = h + h % 2, w + w % 2
        raw = self._run(["-f", "hevc", "-i", "-", *self._SWS, "-vf", "scale=in_range=full:in_color_matrix=bt601",
                         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], data[4:])
        return np.frombuffer(raw, np.uint8)[: hp * wp * 3].reshape(hp, wp, 3)[:h, :w].copy()


@functools.lru_cache(maxsize=None)
def _ffmpeg_encoders(ffmpeg: str) -> str:
    try:
        return subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class Pcdc(Codec):
    """This project's codec at a budget with a bit-allocation policy, decoded with `steps` DDIM
    steps (None: the model's default)."""

    def __init__(self, runtime, policy: str = "ppo", steps: int | None = None):
        from pcdc_jax import api

        if runtime is None:
            raise ValueError("pcdc codecs need a model runtime (api.load)")
        if policy not in api.POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {api.POLICIES}")
        if policy == "ppo" and not runtime.has_policy:
            raise Unavailable("pcdc:ppo: the model has no trained allocation policy")
        self.rt, self.policy = runtime, policy
        self.steps = runtime.default_steps if steps is None else int(steps)
        self.encode_key = f"pcdc:{policy}"          # the file does not depend on the steps
        self.name = f"pcdc:{policy}@{self.steps}"
        self.label = f"PCDC-JAX {policy}, {self.steps} steps"

    def encode(self, image, max_bytes):
        from pcdc_jax import api
        from pcdc_jax.errors import BudgetError

        try:
            return api.compress(_rgb(image), self.rt, max_bytes=max_bytes, policy=self.policy).data
        except BudgetError:
            return None

    def decode(self, data):
        from pcdc_jax import api
        return api.decompress(data, self.rt, steps=self.steps)


_PILLOW = {"jpeg": ("JPEG", "jpg", range(1, 101), {"subsampling": 2, "optimize": True}),
           "webp": ("WEBP", "webp", range(0, 101), {"method": 6}),
           "avif": ("AVIF", "avif", range(0, 101), {"subsampling": "4:2:0", "speed": 6})}


def get(spec: str, runtime=None, steps: int | None = None) -> Codec:
    """A codec by name: one of CLASSICAL, or ``pcdc:POLICY[@STEPS]`` (needs `runtime`; `steps`
    overrides the default when the spec has none). Raises Unavailable or ValueError."""
    if spec.startswith("pcdc"):
        rest = spec.partition(":")[2] or "ppo"
        policy, _, s = rest.partition("@")
        return Pcdc(runtime, policy, int(s) if s else steps)
    if spec in _PILLOW:
        fmt, feature, grid, options = _PILLOW[spec]
        return _Pillow(spec, fmt, feature, list(grid), options)
    if spec == "jpeg2000":
        return _Jpeg2000()
    if spec == "jpegxl":
        return _JpegXL()
    if spec == "hevc":
        return _Hevc()
    raise ValueError(f"unknown codec {spec!r}; expected one of {CLASSICAL} or pcdc:POLICY[@STEPS]")


def available(specs: Sequence[str], runtime=None, steps: int | None = None, log=print) -> list[Codec]:
    """The codecs of `specs` that this machine has; each missing one is named through `log`."""
    out = []
    for s in specs:
        try:
            out.append(get(s, runtime, steps))
        except Unavailable as e:
            log(f"skipping {s}: {e}")
    return out
