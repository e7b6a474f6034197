"""Export a training run's latest (or given) step as a model directory for `pcdc` and eval.

  python train/export_model.py --run runs/cpu --out pcdc_jax/models/default [--step N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcdc_jax import checkpoint, parallel, training  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--step", type=int)
    args = ap.parse_args(argv)
    mngr = checkpoint.manager(Path(args.run) / "checkpoints", create=False)
    step = args.step if args.step is not None else mngr.latest_step()
    if step is None:
        sys.exit(f"export_model: error: {args.run} has no checkpoint")
    cfg = checkpoint.restore_config(mngr, step)
    state = checkpoint.restore_state(mngr, parallel.abstract_replicated(training.abstract_state(cfg),
                                                                        parallel.make_mesh(1)), step)
    training.export(args.out, cfg, state)
    print(f"exported step {step} of {args.run} to {args.out}")


if __name__ == "__main__":
    main()
