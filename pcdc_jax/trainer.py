"""The training loop the train/ entry points share: per-step batches and keys, logging, checkpoints.

The batch of step s is `dataset.batch(s, local_batch)` in every process and its key
`fold_in(loop_key(cfg), s)`, so a run resumed from a checkpoint at step s continues exactly as the
uninterrupted run would. Batches are read and placed on the devices by a background thread a few
steps ahead, so the devices do not wait for the host.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
from tqdm import tqdm

from pcdc_jax import checkpoint, parallel
from pcdc_jax.config import Config
from pcdc_jax.data.datasets import FolderDataset

PREFETCH = 2


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The command-line arguments every train/ script shares: data, run, devices, processes."""
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", help="image folders (recursive; png, jpg, tif, webp)")
    src.add_argument("--tfds", metavar="NAME", help="a prepared TFDS dataset, e.g. div2k")
    ap.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    ap.add_argument("--split", default="train", help="TFDS split")
    ap.add_argument("--run", required=True, help="run directory (checkpoints, metrics.jsonl)")
    ap.add_argument("--steps", type=int, help="stop after this many total steps")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    ap.add_argument("--export", help="write a model directory (inference + config) at the end")
    ap.add_argument("--devices", type=int, help="number of local devices (default: all)")
    ap.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: process 0's address")
    ap.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    ap.add_argument("--process-id", type=int, help="multi-host: this process's index")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                    help="config overrides, e.g. train.lmbda=0.02")


def start(ap: argparse.ArgumentParser, args) -> None:
    """Joins the other processes of a multi-host run (a usage error if the flags do not fit)."""
    if args.export and (args.num_processes or 1) > 1:
        ap.error("--export is single-process; export a multi-host run with train/export_model.py")
    try:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:
        ap.error(str(e))


def open_frozen_run(ap: argparse.ArgumentParser, args):
    """For the scripts that train a part on top of a frozen --model: (model, cfg, mngr,
    resuming). cfg is the model's config with --set applied, or the run's own when resuming;
    a usage error if the run's codec differs from the model's."""
    model = checkpoint.load_model(args.model)
    cfg = model.cfg.override(args.set)
    mngr = checkpoint.manager(Path(args.run) / "checkpoints", keep=cfg.train.keep_checkpoints)
    resuming = args.resume and mngr.latest_step() is not None
    if resuming:
        cfg = checkpoint.restore_config(mngr).override(args.set)
    if cfg.codec != model.cfg.codec:
        ap.error("the run's codec config differs from --model's")
    return model, cfg, mngr, resuming


def mesh_for(ap: argparse.ArgumentParser, args, cfg: Config):
    """The data-parallel mesh of --devices, checked against the batch size."""
    try:
        mesh = parallel.make_mesh(args.devices)
        local_batch_size(cfg)
    except ValueError as e:
        ap.error(str(e))
    return mesh


def open_dataset(ap: argparse.ArgumentParser, args, cfg: Config):
    """This process's shard of --data folders or the --tfds dataset, cropped to train.crop_size
    (a one-line error when there is nothing usable to read)."""
    tc = cfg.train
    shard = dict(seed=tc.seed, process_index=jax.process_index(), process_count=jax.process_count())
    try:
        if args.tfds:
            from pcdc_jax.data.tfds_source import TfdsDataset
            return TfdsDataset(args.tfds, tc.crop_size, data_dir=args.data_dir, split=args.split, **shard)
        return FolderDataset(args.data, tc.crop_size, **shard)
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))


def root_key(cfg: Config) -> jax.Array:
    """The run's root key; fold_in(root, 0) initialises parameters, fold_in(root, 1) drives steps."""
    return jax.random.PRNGKey(cfg.train.seed)


def local_batch_size(cfg: Config) -> int:
    """This process's share of `train.batch_size`."""
    n = jax.process_count()
    if cfg.train.batch_size % n:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by {n} processes")
    return cfg.train.batch_size // n


def prefetch(load: Callable[[int], Any], steps: range, depth: int = PREFETCH) -> Iterator[Any]:
    """Yields load(s) for s in steps, computing up to `depth` of them ahead on one worker thread."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch") as ex:
        pending = collections.deque(ex.submit(load, s) for s in steps[:depth])
        for s in steps[depth:]:
            pending.append(ex.submit(load, s))
            yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Log:
    """metrics.jsonl (and TensorBoard event files when tensorboardX is installed), process 0 only."""

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / "metrics.jsonl", "a")
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, m: dict) -> None:
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in m.items():
                if k not in ("step", "time"):
                    self.tb.add_scalar(k, v, m["step"], walltime=m["time"])
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def fit(step_fn: Callable, state: Any, dataset, *, cfg: Config, mesh, mngr, run_dir: str | Path,
        total: int, extra_args: Sequence = (), show: Sequence[str] = ()) -> Any:
    """Runs `state, metrics = step_fn(state, x, key, *extra_args)` from `state.step` to `total`.

    Every `train.log_every` steps the metrics (plus step, steps/s, images/s, megapixels/s, time)
    are appended to run_dir/metrics.jsonl and the keys in `show` appear in the progress bar; the
    state is checkpointed (asynchronously) every `train.checkpoint_every` steps and at the end.
    Every process runs this; only process 0 logs. Returns the final state.
    """
    tc = cfg.train
    loop_key = jax.random.fold_in(root_key(cfg), 1)
    run_dir = Path(run_dir)
    primary = parallel.is_primary()
    b = local_batch_size(cfg)
    start = int(state.step)
    log = None
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = _Log(run_dir)
    batches = prefetch(lambda s: parallel.shard_batch(dataset.batch(s, b), mesh), range(start, total))
    try:
        with tqdm(initial=start, total=total, unit="step", disable=not primary) as bar:
            t0 = time.time()
            for step, x in zip(range(start, total), batches):
                state, metrics = step_fn(state, x, jax.random.fold_in(loop_key, step), *extra_args)
                if (step + 1) % tc.log_every == 0:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    dt = (time.time() - t0) / tc.log_every
                    t0 = time.time()
                    m.update(step=step + 1, steps_per_s=1 / dt, images_per_s=tc.batch_size / dt,
                             megapixels_per_s=tc.batch_size * tc.crop_size ** 2 / 1e6 / dt, time=t0)
                    if log is not None:
                        log.write(m)
                    bar.set_postfix({k: f"{m[k]:.4g}" for k in (*show, "images_per_s") if k in m})
                bar.update(1)
                if (step + 1) % tc.checkpoint_every == 0 or step + 1 == total:
                    checkpoint.save(mngr, step + 1, cfg, state=state)
    finally:
        batches.close()
        if log is not None:
            log.close()
    mngr.wait_until_finished()
    return state
