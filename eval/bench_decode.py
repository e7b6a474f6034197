"""Decoding throughput: megapixels/s of the window decoder at several DDIM step counts, per preset
and device count, with peak memory and (from XLA's cost analysis) achieved FLOP/s and MFU.

  python eval/bench_decode.py [--presets tiny small] [--steps 0 1 4 16 64] [--devices 1 4]
                              [--size 512] [--out runs/bench_decode.json] [--peak-tflops T]

Each (preset, devices) runs in its own process (simulated CPU devices via XLA_FLAGS when the
backend is the CPU), so peak memory is that configuration's. Weights are freshly initialised:
speed does not depend on them. The latent is random; entropy decoding is not included (see
eval/bench_entropy.py). Times exclude the first call of each configuration (compilation).
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

from pcdc_jax import parallel  # noqa: E402  (imports no JAX backend; children choose devices)


def child(preset: str, devices: int, steps_list, size: int, repeats: int) -> list[dict]:
    import jax
    import numpy as np

    from pcdc_jax import config, training
    from pcdc_jax.diffusion import unet, windows
    from pcdc_jax.diffusion.decode import WindowDecoder

    cfg = config.preset(preset)
    codec = training.init_params_codec(cfg, jax.random.PRNGKey(0))
    up = unet.init_params(cfg.diffusion, unet.feature_channels(cfg.codec), jax.random.PRNGKey(1))
    dec = WindowDecoder(cfg, codec, up, devices=devices)
    hl = wl = -(-size // 64) * 4
    rng = np.random.default_rng(0)
    y_hat = rng.normal(size=(hl, wl, cfg.codec.latent_channels)).astype(np.float32)
    levels = np.full((hl, wl), 2, np.uint8)
    p = windows.plan(hl, wl, cfg)
    mp = (16 * hl) * (16 * wl) / 1e6
    rows = []
    for steps in steps_list:
        dec.decode(y_hat, levels, steps=steps)                   # compile + warm up
        t = time.perf_counter()
        for _ in range(repeats):
            dec.decode(y_hat, levels, steps=steps)
        dt = (time.perf_counter() - t) / repeats
        flops = _flops(dec, p, steps)
        rows.append({"preset": preset, "devices": devices, "steps": steps, "megapixels": mp,
                     "windows": p.num_windows, "window": cfg.diffusion.window,
                     "seconds": dt, "mp_per_s": mp / dt,
                     "gflop": flops / 1e9 if flops else None,
                     "tflop_per_s": flops / dt / 1e12 if flops else None,
                     "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                     "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _flops(dec, p, steps) -> float | None:
    """Model FLOPs of one decode: windows x (context decoder + steps x U-Net), each counted by XLA's
    cost analysis of one window (loops are counted once by XLA, so they are kept out)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pcdc_jax.diffusion import sampler, unet, windows

    cfg = dec.cfg
    y, lv = windows.gather(np.zeros(p.canvas + (cfg.codec.latent_channels,), np.float32),
                           np.zeros(p.canvas, np.uint8), p, np.zeros(1, np.int64))
    sy, sx = p.window_pixels
    x = jnp.zeros((1, sy, sx, 3))
    feats = {s: jnp.zeros((1, sy // s, sx // s, c)) for s, c in unet.feature_channels(cfg.codec).items()}

    def cost(f, *args):
        c = jax.jit(f).lower(*args).compile().cost_analysis()
        c = c[0] if isinstance(c, list) else c
        return float(c["flops"])

    try:
        ctx = cost(sampler.window_sampler(cfg, p.crop_sizes, 0, 0.0), dec.codec_params, dec.codec_params,
                   y, lv, p.starts[:1], np.int32(0))
        net = cost(lambda q, *a: unet.UNet(cfg.diffusion).apply({"params": q}, *a), dec.unet_params,
                   x, jnp.zeros((1,)), x, feats)
    except Exception:            # cost analysis is best effort and backend dependent
        return None
    return p.num_windows * (ctx + steps * net)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "cpu"])
    ap.add_argument("--steps", nargs="+", type=int, default=[0, 1, 4, 16, 64])
    ap.add_argument("--devices", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--size", type=int, default=512, help="square image side in pixels")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_decode.json")
    ap.add_argument("--peak-tflops", type=float, help="device peak, to report model FLOPs utilization")
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "DEVICES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.steps, args.size, args.repeats)
        return
    rows = []
    for preset in args.presets:
        for d in args.devices:
            env = parallel.simulated_devices_env(d)
            cmd = [sys.executable, __file__, "--child", preset, str(d), "--size", str(args.size),
                   "--repeats", str(args.repeats), "--steps", *map(str, args.steps)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    base = {(r["preset"], r["steps"]): r["mp_per_s"] for r in rows if r["devices"] == min(args.devices)}
    print(f"| preset | devices | steps | MP/s | s per MP | speed-up vs {min(args.devices)} device(s) | "
          f"TFLOP/s{' | MFU' if args.peak_tflops else ''} | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|" + ("---|" if args.peak_tflops else "") + "---|")
    for r in rows:
        tf = r["tflop_per_s"]
        mfu = f" | {100 * tf / args.peak_tflops:.1f}%" if args.peak_tflops and tf else (" | -" if args.peak_tflops else "")
        print(f"| {r['preset']} | {r['devices']} | {r['steps']} | {r['mp_per_s']:.3f} | {1 / r['mp_per_s']:.1f} | "
              f"{r['mp_per_s'] / base[(r['preset'], r['steps'])]:.2f}x | {tf:.3f}{mfu} | "
              f"{r['peak_rss_gib']:.2f} |" if tf is not None else
              f"| {r['preset']} | {r['devices']} | {r['steps']} | {r['mp_per_s']:.3f} | {1 / r['mp_per_s']:.1f} | "
              f"{r['mp_per_s'] / base[(r['preset'], r['steps'])]:.2f}x | -{mfu} | {r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()
