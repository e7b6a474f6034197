"""Train the PPO-Lagrangian allocation policy with the codec and U-Net frozen; resumable; exports.

  python train/train_policy.py --model pcdc_jax/models/default --data ../shared/data/train \
      --run runs/policy --steps 600 [--resume] [--export DIR] [--set allocation.reward_steps=2 ...]

Each step draws train.batch_size crops of train.crop_size pixels (a multiple of 64), gives each a
random budget, rolls out the policy, decodes with the model's diffusion decoder at
allocation.reward_steps DDIM steps for the reward, and runs one PPO update plus the dual step
(pcdc_jax.allocation.training). The exported model directory is --model's codec and U-Net plus
the policy, so `pcdc compress --ratio R` uses it by default. Only allocation.* and train.*
overrides make sense.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pcdc_jax import checkpoint, parallel, trainer  # noqa: E402
from pcdc_jax.allocation import policy, ppo, training  # noqa: E402
from pcdc_jax.codec.entropy_coding import Coder  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (frozen codec and U-Net)")
    trainer.add_arguments(ap)
    args = ap.parse_args(argv)
    trainer.start(ap, args)

    model, cfg, mngr, resuming = trainer.open_frozen_run(ap, args)
    run = Path(args.run)
    if cfg.train.crop_size % 64:
        ap.error(f"train.crop_size {cfg.train.crop_size} must be a multiple of 64")
    total = cfg.train.total_steps if args.steps is None else args.steps
    mesh = trainer.mesh_for(ap, args, cfg)
    data = trainer.open_dataset(ap, args, cfg)
    coder = Coder(cfg.codec, model.tables)
    frozen = parallel.replicate(training.load_frozen(model, coder.y_bits, coder.y_half.astype(np.int32),
                                                     cfg), mesh)
    root = trainer.root_key(cfg)
    if resuming:
        template = ppo.init_state(cfg, policy.init_params(cfg, root))
        state = checkpoint.restore_state(mngr, parallel.replicate(template, mesh))
        print(f"resumed from step {int(state.step)}", file=sys.stderr)
    else:
        x0 = parallel.shard_batch(data.batch(0, trainer.local_batch_size(cfg)), mesh)
        state = parallel.replicate(training.init(cfg, frozen, x0, jax.random.fold_in(root, 0)), mesh)
    state = trainer.fit(training.jit_train_step(cfg), state, data, cfg=cfg, mesh=mesh, mngr=mngr,
                        run_dir=run, total=total, extra_args=(frozen,), show=("gain", "bpp", "eta"))
    if args.export and parallel.is_primary():
        checkpoint.export_model(args.export, cfg, model.params, model.tables, step=int(state.step),
                                unet=model.unet, policy=jax.device_get(state.params))
        print(f"exported model to {args.export}", file=sys.stderr)


if __name__ == "__main__":
    main()
