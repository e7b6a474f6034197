"""Train the diffusion decoder (U-Net) on top of a frozen codec; resumable; exports a model.

  python train/train_diffusion.py --model pcdc_jax/models/default --data ../shared/data/train \
      --run runs/unet_small [--steps N] [--resume] [--init-unet MODEL_DIR] [--export DIR] \
      [--set diffusion.lpips_weight=0.1 ...]

The codec (weights, tables, codec config) comes from --model and is not changed; the exported
model directory is that codec plus the trained U-Net and the run's diffusion config.
--init-unet starts a fresh run from another model's U-Net (the same diffusion architecture), e.g.
the previous default model's when its codec is replaced. Data,
devices and multi-host flags as train/train_codec.py; only diffusion.* and train.* overrides
make sense (codec.* would not match the model).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from pcdc_jax import checkpoint, parallel, trainer  # noqa: E402
from pcdc_jax.diffusion import training  # noqa: E402
from pcdc_jax.metrics import weights  # noqa: E402
from pcdc_jax.training import same_shapes  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory with the (frozen) codec")
    ap.add_argument("--init-unet", metavar="MODEL_DIR",
                    help="a fresh run starts from this model's U-Net instead of a random one")
    trainer.add_arguments(ap)
    args = ap.parse_args(argv)
    trainer.start(ap, args)

    model, cfg, mngr, resuming = trainer.open_frozen_run(ap, args)
    run = Path(args.run)
    tc = cfg.train
    total = tc.total_steps if args.steps is None else args.steps
    mesh = trainer.mesh_for(ap, args, cfg)
    data = trainer.open_dataset(ap, args, cfg)          # before the (slow) model set-up
    root = trainer.root_key(cfg)
    key, unet = jax.random.fold_in(root, 0), None
    if args.init_unet and not resuming:
        unet = checkpoint.load_model(args.init_unet).unet
        shapes = jax.eval_shape(lambda: training.init_state(cfg, key).params)   # nothing computed
        if unet is None or not same_shapes(unet, shapes):
            ap.error(f"--init-unet: {args.init_unet} has no U-Net of this run's architecture (diffusion.*)")
        print(f"U-Net initialised from {args.init_unet}", file=sys.stderr)
    state = parallel.replicate(training.init_state(cfg, key, unet), mesh)
    if resuming:
        state = checkpoint.restore_state(mngr, state)
        print(f"resumed from step {int(state.step)}", file=sys.stderr)
    codec_params = parallel.replicate(model.params, mesh)
    lpips_params = parallel.replicate(weights.load("alex"), mesh) if cfg.diffusion.lpips_weight > 0 else None
    state = trainer.fit(training.jit_train_step(cfg), state, data, cfg=cfg, mesh=mesh, mngr=mngr,
                        run_dir=run, total=total, extra_args=(codec_params, lpips_params),
                        show=("loss", "psnr_x0"))
    if args.export and parallel.is_primary():
        checkpoint.export_model(args.export, cfg, model.params, model.tables, step=int(state.step),
                                unet=jax.device_get(state.params))
        print(f"exported model to {args.export}", file=sys.stderr)


if __name__ == "__main__":
    main()
