"""Training data from a prepared TensorFlow Datasets (TFDS) dataset, read by random access.

Reads array_record files through `tfds.data_source`, so TensorFlow is not needed, and never
downloads: the dataset must already be prepared under `data_dir`. As with `FolderDataset`, the
batch for step s depends only on (seed, step, process), and each process reads its own shard.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from pcdc_jax.data.datasets import random_crop_flip

_DEFAULT_IMAGE_KEYS = {"div2k": "hr"}


def default_image_key(name: str) -> str:
    """The image feature to train on: "hr" for DIV2K, "image" otherwise."""
    return _DEFAULT_IMAGE_KEYS.get(name.split("/")[0].split(":")[0], "image")


class TfdsDataset:
    """One image feature of a TFDS split, decoded on demand; `batch(step)` gives random crops in
    [0, 1]. Process p of n reads the examples i with i % n == p; too-small images raise at batch
    time (the dataset is not scanned up front)."""

    def __init__(self, name: str, crop_size: int, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, data_dir: str | None = None, split: str = "train",
                 image_key: str | None = None):
        self.source = _open_source(name, split, data_dir)
        self.name, self.split = name, split
        self.image_key = image_key or default_image_key(name)
        features = self.source.dataset_info.features
        if self.image_key not in features.keys():
            raise ValueError(f"TFDS dataset {name!r} has no feature {self.image_key!r} "
                             f"(features: {', '.join(features.keys())}); pass image_key")
        self.indices = np.arange(process_index, len(self.source), process_count)
        if len(self.indices) == 0:
            raise ValueError(f"TFDS dataset {name!r} split {split!r} has {len(self.source)} "
                             f"examples: none for process {process_index} of {process_count}")
        self.crop_size, self.seed, self.process_index = crop_size, seed, process_index

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """[B, crop, crop, 3] float32 in [0, 1] for this step (deterministic)."""
        rng = np.random.default_rng([self.seed, step, self.process_index])
        c = self.crop_size
        out = np.empty((batch_size, c, c, 3), np.float32)
        for i, index in enumerate(self.indices[rng.integers(0, len(self.indices), batch_size)]):
            im = self._image(self.source[int(index)], int(index))
            out[i] = random_crop_flip(rng, im, c) / np.float32(255.0)   # [c, c, 1] broadcasts
        return out

    def _image(self, example: dict[str, Any], index: int) -> np.ndarray:
        """The uint8 [H, W, 1 or 3] image of one example, checked against the crop size."""
        im = np.asarray(example[self.image_key])
        if im.ndim == 2:
            im = im[..., None]
        where = f"TFDS {self.name!r} split {self.split!r} example {index} ({self.image_key!r})"
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] not in (1, 3):
            raise ValueError(f"{where}: {im.dtype} {im.shape}, expected uint8 [H, W, 1 or 3]")
        if min(im.shape[:2]) < self.crop_size:
            raise ValueError(f"{where}: {im.shape[0]}x{im.shape[1]} image smaller than crop "
                             f"{self.crop_size}")
        return im


def _open_source(name: str, split: str, data_dir: str | None):
    """`tfds.data_source(..., download=False)`; FileNotFoundError, saying how to prepare the
    dataset, when it is not prepared (tfds's own errors for that case are misleading)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, KeyError, ValueError) as e:
        error = e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError:   # DatasetNotFoundError: not a registered name, no files under data_dir
        builder = None
    root = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    config = builder is not None and builder.builder_config
    target = f"{builder.name}/{config.name}" if config else name
    build = f"tfds build {target} --data_dir {root} --file_format array_record"
    if builder is not None and builder.is_prepared():
        if isinstance(error, NotImplementedError):   # e.g. prepared as tfrecord
            raise ValueError(f"TFDS dataset {name!r} in {builder.data_dir} has no random-access "
                             f"(array_record) files; rebuild it with `{build}`") from error
        raise error                                  # e.g. an unknown split
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared under {root} (nothing is downloaded at run time). "
        f"Prepare it on a machine with TensorFlow and internet access: `{build}`, then copy the "
        f"folder here") from error
