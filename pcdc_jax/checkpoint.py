"""Orbax checkpoints shared by train/, eval/ and the CLI.

A checkpoint directory is an Orbax CheckpointManager directory whose steps hold up to three items:
  state      full training state (resume only)
  inference  {"params": ..., "tables": ..., ["unet": ...], ["policy": ...]}: codec weights,
             integer coding tables and, once trained, the diffusion U-Net's and the allocation
             policy's weights (CLI, eval)
  config     the Config as JSON
A shipped model directory is the same layout with one step and no `state` item, so anything that
loads a model accepts a training run's checkpoint directory too.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from pcdc_jax.config import Config
from pcdc_jax.errors import ModelLoadError


@functools.cache
def _one_copy_of_replicated_arrays() -> None:
    """On CPU, saves every replicated array once (by its first replica), as Orbax already does on
    GPU. Its CPU default (replica-parallel saving) splits each one into a slice per device and
    dispatches a slice op for every array and device, compiling one per shape: on 2 cores the tiny
    test model's first checkpoint took 7 s (1.6 s without), each later one 2.4 s (1.5 s)."""
    try:      # Orbax internals (pinned 0.12.8): another version keeps its default, just slower
        from orbax.checkpoint._src.metadata import array_metadata_store
        from orbax.checkpoint._src.serialization import type_handler_registry
    except ImportError:
        return
    if jax.default_backend() == "cpu":
        type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False,
                                                      array_metadata_store=array_metadata_store.Store()),
            override=True, ignore_warnings=True)


def manager(directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
            create: bool = True) -> ocp.CheckpointManager:
    _one_copy_of_replicated_arrays()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_names=("state", "inference", "config"))


def save(mngr: ocp.CheckpointManager, step: int, cfg: Config, *, state=None, inference=None,
         force: bool = False) -> bool:
    """Saves whichever items are given (asynchronously when the manager is async)."""
    items = {"config": ocp.args.JsonSave(cfg.to_dict())}
    if state is not None:
        items["state"] = ocp.args.StandardSave(state)
    if inference is not None:
        items["inference"] = ocp.args.StandardSave(inference)
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_state(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores the training state (latest step by default) onto the abstract state's shardings."""
    step = mngr.latest_step() if step is None else step
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]


class Model(NamedTuple):
    """What the CLI and eval need: config, float params, integer coding tables, fingerprint.

    The fingerprint covers the config's codec section, the codec weights and the tables (what the
    bitstream depends on), not the U-Net or the policy: a retrained diffusion decoder still reads
    older files, and the allocation policy is an encoder-side choice the level map records.
    """

    cfg: Config
    params: Any
    tables: dict[str, np.ndarray]
    fingerprint: bytes  # 16 bytes, stored in every .pcdc file
    unet: Any = None    # diffusion U-Net weights, or None (then only steps=0 decoding)
    policy: Any = None  # allocation policy weights (allocation.policy), or None (no PPO policy)


def fingerprint(cfg: Config, params, tables) -> bytes:
    """sha256 over the codec config and every array (canonical order), truncated to 16 bytes."""
    h = hashlib.sha256(json.dumps(cfg.to_dict()["codec"], sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path({"p": params, "t": tables})[0],
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()[:16]


def load_model(directory: str | os.PathLike, step: int | None = None) -> Model:
    """Restores the inference item and config (never the training state) from a model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    mngr = manager(directory, async_save=False, create=False)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise ModelLoadError(f"{directory} holds no checkpoint")
    try:
        cfg = Config.from_dict(mngr.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"])
        inf = mngr.restore(step, args=ocp.args.Composite(inference=ocp.args.StandardRestore()))
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{directory} step {step}: no inference item ({e})") from None
    inf = jax.tree_util.tree_map(np.asarray, inf["inference"])
    params, tables = inf["params"], inf["tables"]
    return Model(cfg, params, tables, fingerprint(cfg, params, tables), inf.get("unet"),
                 inf.get("policy"))


def export_model(directory: str | os.PathLike, cfg: Config, params, tables, step: int = 0,
                 unet=None, policy=None) -> None:
    """Writes a model directory (inference + config only) atomically: temp dir, then rename."""
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        mngr = manager(tmp, keep=1, async_save=False)
        inference = {"params": params, "tables": tables}
        if unet is not None:
            inference["unet"] = unet
        if policy is not None:
            inference["policy"] = policy
        save(mngr, step, cfg, inference=jax.tree_util.tree_map(np.asarray, inference), force=True)
        mngr.wait_until_finished()
        mngr.close()
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def restore_config(mngr: ocp.CheckpointManager, step: int | None = None) -> Config:
    step = mngr.latest_step() if step is None else step
    return Config.from_dict(mngr.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"])
