"""Train the full codec jointly (encoder, priors, context decoder, diffusion U-Net); resumable.

  python train/train_codec.py --preset cpu --data ../shared/data/train --run runs/cpu \
      [--steps N] [--resume] [--init-from MODEL_DIR] [--export DIR] [--set train.lmbda=0.02 ...]
  python train/train_codec.py --preset small --tfds div2k --data-dir ~/tensorflow_datasets --run runs/s
  # multi-host: the same command in every process, plus
      --coordinator HOST:PORT --num-processes N --process-id I

Losses and their schedule are in the config's `train` section (`--set train.diffusion_weight=0`
trains the codec alone). Every process reads its own shard of the data; process 0 logs to
RUN/metrics.jsonl (and RUN/tensorboard/); Orbax checkpoints go to RUN/checkpoints/.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from pcdc_jax import checkpoint, config, parallel, trainer, training  # noqa: E402
from pcdc_jax.metrics import weights  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(config.PRESETS))
    ap.add_argument("--init-from", metavar="MODEL_DIR",
                    help="start from this model's weights (codec, and U-Net if it has one; fresh "
                         "optimizer and schedule); its codec config replaces the preset's")
    trainer.add_arguments(ap)
    args = ap.parse_args(argv)
    trainer.start(ap, args)

    run = Path(args.run)
    cfg = config.preset(args.preset).override(args.set)
    mngr = checkpoint.manager(run / "checkpoints", keep=cfg.train.keep_checkpoints)
    resuming = args.resume and mngr.latest_step() is not None
    init = None
    if resuming:
        cfg = checkpoint.restore_config(mngr).override(args.set)
    elif args.init_from:
        init = checkpoint.load_model(args.init_from)
        arch = {"codec": init.cfg.codec}
        if init.unet is not None:
            arch["diffusion"] = init.cfg.diffusion
        cfg = dataclasses.replace(cfg, **arch).override(args.set)
        unet_ok = init.unet is None or not training.has_unet(cfg) or training.same_shapes(
            init.unet, training.abstract_state(cfg).params["unet"])
        if cfg.codec != init.cfg.codec or not unet_ok:
            ap.error("--init-from: codec.* or diffusion.* overrides would change the loaded "
                     "model's architecture")
    tc = cfg.train
    total = tc.total_steps if args.steps is None else args.steps
    mesh = trainer.mesh_for(ap, args, cfg)
    data = trainer.open_dataset(ap, args, cfg)          # before the (slow) model set-up
    key = jax.random.fold_in(trainer.root_key(cfg), 0)
    if resuming:         # onto the state's shapes: no parameters initialised only to be replaced
        abstract = parallel.abstract_replicated(training.abstract_state(cfg), mesh)
        state = checkpoint.restore_state(mngr, abstract)
        print(f"resumed from step {int(state.step)}", file=sys.stderr)
    elif init is not None:
        state = parallel.replicate(training.init_state(cfg, key, init.params, init.unet), mesh)
        print(f"initialised from {args.init_from}", file=sys.stderr)
    else:
        codec = None
        if tc.klt_crops:
            codec = training.klt_start(cfg, training.init_params_codec(cfg, key), data,
                                       trainer.local_batch_size(cfg))
            print(f"codec started at the 16x16-block KLT of {tc.klt_crops} crops", file=sys.stderr)
        state = parallel.replicate(training.init_state(cfg, key, codec_params=codec), mesh)
    lpips = None
    if training.has_unet(cfg) and cfg.diffusion.lpips_weight > 0:
        lpips = parallel.replicate(weights.load("alex"), mesh)
    state = trainer.fit(training.jit_train_step(cfg), state, data, cfg=cfg, mesh=mesh, mngr=mngr,
                        run_dir=run, total=total, extra_args=(lpips,),
                        show=("bpp", "psnr", "psnr_x0"))
    print(f"process {jax.process_index()}/{jax.process_count()}: {jax.device_count()} devices "
          f"({jax.local_device_count()} local), step {int(state.step)}, state sha256 "
          f"{training.state_digest(state)[:16]}", file=sys.stderr)
    if args.export:
        training.export(args.export, cfg, state)
        print(f"exported model to {args.export}", file=sys.stderr)


if __name__ == "__main__":
    main()
