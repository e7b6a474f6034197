"""Train the codec stage (rate + MSE) on image folders; resumable; exports a model directory.

  python train/train_codec.py --preset small --data ../shared/data/train --run runs/small \
      [--steps N] [--resume] [--export models/default] [--set train.lmbda=0.02 ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from pcdc_jax import checkpoint, config, parallel, trainer  # noqa: E402
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
    root = trainer.root_key(cfg)
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
    state = trainer.fit(training.jit_train_step(cfg), state, data, cfg=cfg, mesh=mesh, mngr=mngr,
                        run_dir=run, total=total, show=("bpp", "psnr"))
    if args.export:
        params = jax.device_get(state.params)
        checkpoint.export_model(args.export, cfg, params, entropy_coding.build_tables(cfg.codec, params),
                                step=int(state.step))
        print(f"exported model to {args.export}", file=sys.stderr)


if __name__ == "__main__":
    main()
