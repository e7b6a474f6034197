"""The training loop the train/ entry points share: per-step batches and keys, logging, checkpoints.

The batch of step s is `dataset.batch(s, batch_size)` and its key `fold_in(loop_key(cfg), s)`, so a
run resumed from a checkpoint at step s continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from tqdm import tqdm

from pcdc_jax import checkpoint, parallel
from pcdc_jax.config import Config


def root_key(cfg: Config) -> jax.Array:
    """The run's root key; fold_in(root, 0) initialises parameters, fold_in(root, 1) drives steps."""
    return jax.random.PRNGKey(cfg.train.seed)


def fit(step_fn: Callable, state: Any, dataset, *, cfg: Config, mesh, mngr, run_dir: str | Path,
        total: int, extra_args: Sequence = (), show: Sequence[str] = ()) -> Any:
    """Runs `state, metrics = step_fn(state, x, key, *extra_args)` from `state.step` to `total`.

    Every `train.log_every` steps the metrics (plus step, steps/s, images/s, time) are appended to
    run_dir/metrics.jsonl and the keys in `show` appear in the progress bar; the state is
    checkpointed every `train.checkpoint_every` steps and at the end. Returns the final state.
    """
    tc = cfg.train
    loop_key = jax.random.fold_in(root_key(cfg), 1)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = int(state.step)
    with open(run_dir / "metrics.jsonl", "a") as log, tqdm(initial=start, total=total, unit="step") as bar:
        t0 = time.time()
        for step in range(start, total):
            x = parallel.shard_batch(dataset.batch(step, tc.batch_size), mesh)
            state, metrics = step_fn(state, x, jax.random.fold_in(loop_key, step), *extra_args)
            if (step + 1) % tc.log_every == 0:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = (time.time() - t0) / tc.log_every
                t0 = time.time()
                m.update(step=step + 1, steps_per_s=1 / dt, images_per_s=tc.batch_size / dt, time=time.time())
                log.write(json.dumps(m) + "\n")
                log.flush()
                bar.set_postfix({k: f"{m[k]:.4g}" for k in (*show, "images_per_s") if k in m})
            bar.update(1)
            if (step + 1) % tc.checkpoint_every == 0 or step + 1 == total:
                checkpoint.save(mngr, step + 1, cfg, state=state)
    mngr.wait_until_finished()
    return state
