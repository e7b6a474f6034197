"""Training data from image folders: decoded once, random crops and flips per step.

The batch for step s depends only on (seed, step, process), so a resumed run sees the same data.
"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np

from pcdc_jax.data.images import IMAGE_SUFFIXES, read_image


def list_images(root: str | Path) -> list[Path]:
    """All images under root (recursive), sorted for a stable order."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images (png, jpg, tif, webp) under {root}")
    return files


def random_crop_flip(rng: np.random.Generator, im: np.ndarray, crop: int) -> np.ndarray:
    """A random crop x crop window of [H, W, C] `im`, flipped left-right, then up-down, each with
    probability 1/2. Draws y, x and the two flips from `rng`, in that order (a view, no copy)."""
    y = rng.integers(0, im.shape[0] - crop + 1)
    x = rng.integers(0, im.shape[1] - crop + 1)
    out = im[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return out


class FolderDataset:
    """All images of a folder in memory as uint8; `batch(step)` gives random crops in [0, 1]."""

    def __init__(self, roots, crop_size: int, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, workers: int = 4):
        files = [f for r in ([roots] if isinstance(roots, (str, Path)) else roots)
                 for f in list_images(r)]
        files = files[process_index::process_count]   # each process reads its own shard
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            images = list(ex.map(lambda f: read_image(f, notices=[]), files))
        small = [f for f, im in zip(files, images) if min(im.shape[:2]) < crop_size]
        if small:
            raise ValueError(f"{len(small)} images smaller than crop {crop_size}, e.g. {small[0]}")
        self.files, self.images = files, images
        self.crop_size, self.seed, self.process_index = crop_size, seed, process_index

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """[B, crop, crop, 3] float32 in [0, 1] for this step (deterministic)."""
        rng = np.random.default_rng([self.seed, step, self.process_index])
        c = self.crop_size
        out = np.empty((batch_size, c, c, 3), np.float32)
        for i, idx in enumerate(rng.integers(0, len(self.images), batch_size)):
            out[i] = random_crop_flip(rng, self.images[idx], c) / np.float32(255.0)
        return out
