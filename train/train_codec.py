"""Train the codec stage (rate + MSE) on image folders; resumable; exports a model directory.

  python train/train_codec.py --preset small --data ../shared/data/train --run runs/small \
      [--steps N] [--resume] [--export models/default] [--set train.lmbda=0.02 ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pcdc_jax import checkpoint, config, parallel  # noqa: E402
from pcdc_jax.codec import entropy_coding, training  # noqa: E402
from pcdc_jax.data.datasets import FolderDataset  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=sorted(config.PRESETS))
    ap.add_argument("--data", nargs="+", required=True, help="image folders (recursive)")
    ap.add_argument("--run", required=True, help="run directory (checkpoints, metrics.jsonl)")
    ap.add_argument("--steps", type=int, help="stop after this many total steps")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    ap.add_argument("--init-from", metavar="MODEL_DIR",
                    help="start from this model's weights (fresh optimizer and schedule); its codec "
                         "config replaces the preset's")
    ap.add_argument("--export", help="write a model directory (inference + config) at the end")
    ap.add_argument("--devices", type=int, help="number of local devices (default: all)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    args = ap.parse_args(argv)

    run = Path(args.run)
    cfg = config.preset(args.preset).override(args.set)
    mngr = checkpoint.manager(run / "checkpoints", keep=cfg.train.keep_checkpoints)
    resuming = args.resume and mngr.latest_step() is not None
    init = None
    if resuming:
        cfg = checkpoint.restore_config(mngr).override(args.set)
    elif args.init_from:
        init = checkpoint.load_model(args.init_from)
        cfg = dataclasses.replace(cfg, codec=init.cfg.codec).override(args.set)
        if cfg.codec != init.cfg.codec:
            ap.error("--init-from: codec.* overrides would change the loaded model's architecture")
    tc = cfg.train
    total = tc.total_steps if args.steps is None else args.steps
    mesh = parallel.make_mesh(args.devices)
    root = jax.random.PRNGKey(tc.seed)
    if init is not None:
        state = training.init_state(cfg, params=init.params)
        print(f"initialised from {args.init_from}", file=sys.stderr)
    else:
        state = training.init_state(cfg, jax.random.fold_in(root, 0))
    state = parallel.replicate(state, mesh)
    if resuming:
        state = checkpoint.restore_state(mngr, state)
        print(f"resumed from step {int(state.step)}", file=sys.stderr)
    data = FolderDataset(args.data, tc.crop_size, seed=tc.seed)
    step_fn = training.jit_train_step(cfg)
    loop_key = jax.random.fold_in(root, 1)
    run.mkdir(parents=True, exist_ok=True)
    start = int(state.step)
    with open(run / "metrics.jsonl", "a") as log, tqdm(initial=start, total=total, unit="step") as bar:
        t0 = time.time()
        for step in range(start, total):
            x = parallel.shard_batch(data.batch(step, tc.batch_size), mesh)
            state, metrics = step_fn(state, x, jax.random.fold_in(loop_key, step))
            if (step + 1) % tc.log_every == 0:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = (time.time() - t0) / tc.log_every
                t0 = time.time()
                m.update(step=step + 1, steps_per_s=1 / dt, images_per_s=tc.batch_size / dt,
                         time=time.time())
                log.write(json.dumps(m) + "\n")
                log.flush()
                bar.set_postfix(bpp=f"{m['bpp']:.3f}", psnr=f"{m['psnr']:.2f}",
                                img_s=f"{m['images_per_s']:.1f}")
            bar.update(1)
            if (step + 1) % tc.checkpoint_every == 0 or step + 1 == total:
                checkpoint.save(mngr, step + 1, cfg, state=state)
    mngr.wait_until_finished()
    if args.export:
        params = jax.device_get(state.params)
        checkpoint.export_model(args.export, cfg, params, entropy_coding.build_tables(cfg.codec, params),
                                step=int(state.step))
        print(f"exported model to {args.export}", file=sys.stderr)


if __name__ == "__main__":
    main()
