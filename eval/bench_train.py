"""Training throughput: images/s and megapixels/s of the full training step (codec + diffusion
U-Net, or the codec alone), per preset and device count, with compile time and peak memory.

  python eval/bench_train.py [--presets tiny cpu] [--devices 1 4] [--modes joint codec]
                             [--steps 5] [--out runs/bench_train.json]

Each (preset, devices) runs in its own process (simulated CPU devices via XLA_FLAGS when the
backend is the CPU). The step is the one train/train_codec.py runs (`pcdc_jax.training`), on the
preset's batch of random crops (rounded up to a multiple of the devices; speed does not depend on
content), past diffusion_start_step so the
U-Net is trained; weights are freshly initialised. Times exclude the first (compiling) step.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdc_jax import parallel  # noqa: E402


def child(preset: str, devices: int, modes, steps: int) -> None:
    import jax
    import numpy as np

    from pcdc_jax import config, training

    for mode in modes:
        cfg = config.preset(preset)
        batch = -(-cfg.train.batch_size // devices) * devices          # a multiple of the devices
        cfg = cfg.override([f"train.batch_size={batch}", "train.diffusion_start_step=0"]
                           + (["train.diffusion_weight=0"] if mode == "codec" else []))
        tc = cfg.train
        mesh = parallel.make_mesh(devices)
        state = parallel.replicate(training.init_state(cfg, jax.random.PRNGKey(0)), mesh)
        sizes = {k: sum(a.size for a in jax.tree.leaves(v)) for k, v in state.params.items()}
        x = np.random.default_rng(0).random((tc.batch_size, tc.crop_size, tc.crop_size, 3), np.float32)
        x = parallel.shard_batch(x, mesh)
        step = training.jit_train_step(cfg)
        t = time.perf_counter()
        state, m = step(state, x, jax.random.PRNGKey(0))
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(steps):
            state, m = step(state, x, jax.random.PRNGKey(i + 1))
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t) / steps
        print(json.dumps({
            "preset": preset, "mode": mode, "devices": devices, "batch": tc.batch_size,
            "crop": tc.crop_size, "codec_params_m": sizes["codec"] / 1e6,
            "unet_params_m": sizes.get("unet", 0) / 1e6, "compile_s": compile_s, "s_per_step": dt,
            "images_per_s": tc.batch_size / dt, "mp_per_s": tc.batch_size * tc.crop_size ** 2 / 1e6 / dt,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "cpu"])
    ap.add_argument("--devices", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--modes", nargs="+", default=["joint", "codec"], choices=["joint", "codec"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the compiling one")
    ap.add_argument("--out", default="runs/bench_train.json")
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "DEVICES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.modes, args.steps)
        return
    rows = []
    for preset in args.presets:
        for d in args.devices:
            cmd = [sys.executable, __file__, "--child", preset, str(d), "--steps", str(args.steps),
                   "--modes", *args.modes]
            out = subprocess.run(cmd, env=parallel.simulated_devices_env(d), check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("| preset | step | devices | batch x crop | params M (codec + U-Net) | s/step | images/s | "
          "MP/s | compile s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['mode']} | {r['devices']} | {r['batch']} x {r['crop']}² | "
              f"{r['codec_params_m']:.2f} + {r['unet_params_m']:.2f} | {r['s_per_step']:.3f} | "
              f"{r['images_per_s']:.2f} | {r['mp_per_s']:.3f} | {r['compile_s']:.0f} | {r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()
