"""The `pcdc` command: compress, decompress, info, metrics.

Every failure a user can cause prints one line to stderr and exits non-zero; outputs are written
under a temporary name and renamed, so nothing partial is ever left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_USAGE, EXIT_FAILURE, EXIT_BUDGET = 2, 1, 3
POLICIES = ("ppo", "uniform", "greedy", "hf")   # api.POLICIES, without importing JAX for --help


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pcdc", description="Learned image codec for remote-sensing "
                                 "and drone imagery (.pcdc files).")
    sub = ap.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="image (PNG/JPEG/TIFF) -> .pcdc")
    c.add_argument("input")
    c.add_argument("-o", "--output", required=True)
    g = c.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, help="file at most (24*H*W/8)/R bytes")
    g.add_argument("--bpp", type=float, help="file at most B*H*W/8 bytes")
    g.add_argument("--level", type=int, help="uniform quantization level (0 coarsest .. K-1 finest)")
    c.add_argument("--policy", choices=POLICIES,
                   help="per-block level allocation under --ratio/--bpp: ppo (the model's trained "
                   "policy, the default when it has one), uniform (one level for all blocks), "
                   "greedy (Lagrangian on a latent distortion proxy), hf (high-frequency energy)")
    c.add_argument("--adapt-steps", type=int, default=0, metavar="N",
                   help="test-time adaptation: N PPO updates of the policy on this image first "
                   "(decodes crops of it with the diffusion decoder; slow)")
    c.add_argument("--model", help="model directory (default: $PCDC_MODEL or the shipped model)")
    c.add_argument("--quiet", action="store_true")

    d = sub.add_parser("decompress", help=".pcdc -> PNG/TIFF")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--model")
    d.add_argument("--steps", type=int, help="DDIM steps of the diffusion decoder (default: the "
                   "model's, see `pcdc info`); 0 gives the context decoder's base image")
    d.add_argument("--seed", type=int, default=0, help="noise seed (default 0); the image does not "
                   "depend on --devices or --batch")
    d.add_argument("--eta", type=float, help="DDIM eta (default: the model's, 0 = deterministic)")
    d.add_argument("--t-start", type=float, help="DDIM start time in (0, 1] (default: the model's; "
                   "below 1 refines the base image noised to that time)")
    d.add_argument("--devices", type=int, help="local devices to shard windows over (default: all)")
    d.add_argument("--batch", type=int, help="windows per sampling call (rounded up to the devices)")
    d.add_argument("--reference", help="original image: also print PSNR against it")
    d.add_argument("--quiet", action="store_true")

    cb = sub.add_parser("compress-batch", help="many images (folder or glob) -> .pcdc files, "
                        "mirroring their relative paths")
    cb.add_argument("input", help="a folder (recursive), a glob such as 'frames/**/*.tif', or one image")
    cb.add_argument("-o", "--output", required=True, help="output folder")
    g = cb.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, help="each file at most (24*H*W/8)/R bytes")
    g.add_argument("--bpp", type=float, help="each file at most B*H*W/8 bytes")
    g.add_argument("--level", type=int, help="uniform quantization level (0 coarsest .. K-1 finest)")
    cb.add_argument("--policy", choices=POLICIES, help="per-block allocation (as for compress)")
    _batch_arguments(cb)

    db = sub.add_parser("decompress-batch", help="many .pcdc files (folder, glob or .tar) -> "
                        "images, mirroring their relative paths")
    db.add_argument("input", help="a folder (recursive), a glob, a .tar archive, or one file")
    db.add_argument("-o", "--output", required=True, help="output folder")
    db.add_argument("--format", choices=("png", "tif"), default="png",
                    help="output images (tif keeps GeoTIFF tags; default png)")
    db.add_argument("--steps", type=int, help="DDIM steps (default: the model's)")
    db.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    db.add_argument("--eta", type=float, help="DDIM eta (default: the model's)")
    db.add_argument("--t-start", type=float, help="DDIM start time (default: the model's)")
    db.add_argument("--batch", type=int, help="windows per device call, packed from many files "
                    "(rounded up to the devices; default: the model's)")
    db.add_argument("--devices", type=int, help="local devices to shard windows over (default: all)")
    db.add_argument("--max-open", type=int, default=4, metavar="N",
                    help="images decoded at once (bounds memory; default 4)")
    _batch_arguments(db)

    i = sub.add_parser("info", help="describe a .pcdc file (and the model that decodes it)")
    i.add_argument("input")
    i.add_argument("--model", help="model directory (default: $PCDC_MODEL or the shipped model)")
    i.add_argument("--json", action="store_true")

    m = sub.add_parser("metrics", help="quality metrics of an image against a reference")
    m.add_argument("reference")
    m.add_argument("image")
    m.add_argument("--which", nargs="+", metavar="METRIC",
                   help="some of psnr ssim ms_ssim lpips_alex lpips_vgg dists (default: all)")
    m.add_argument("--json", action="store_true")
    return ap


def _batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (default: $PCDC_MODEL or the shipped model)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo outputs that exist (default: skip them; they are complete)")
    p.add_argument("--workers", type=int, help="host threads reading and entropy-coding "
                   "(default: CPUs, at most 8)")
    p.add_argument("--summary", metavar="FILE.json", help="also write the summary as JSON (with "
                   "several processes, FILE.processI.json for process I)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-host: process 0's address; each process takes its share of the files")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's index")


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        from pcdc_jax.errors import PCDCError
        raise PCDCError(f"{path}: cannot read ({e.strerror})") from None


def _check_output(path: str) -> None:
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        from pcdc_jax.errors import PCDCError
        raise PCDCError(f"{path}: output folder {parent} does not exist")


def _compress(args) -> int:
    from pcdc_jax import api
    from pcdc_jax.data import geotiff
    from pcdc_jax.data.images import atomic_write_bytes, read_image

    _check_output(args.output)
    notices: list[str] = []
    image = read_image(args.input, notices)
    for n in notices:
        print(f"notice: {n}", file=sys.stderr)
    rt = api.load(args.model)
    t0 = time.time()
    result = api.compress(image, rt, level=args.level, ratio=args.ratio, bpp=args.bpp,
                          policy=args.policy, adapt_steps=args.adapt_steps,
                          metadata=geotiff.metadata_of(args.input))
    dt = time.time() - t0
    atomic_write_bytes(args.output, result.data)
    h, w = image.shape[:2]
    n = len(result.data)
    levels = sorted(set(result.levels[: -(-h // 16), : -(-w // 16)].ravel().tolist()))
    if not args.quiet:
        print(f"{args.input} ({w}x{h}) -> {args.output}: {n} bytes, {8 * n / (h * w):.4f} bpp, "
              f"ratio {3 * h * w / n:.1f}:1, level {','.join(map(str, levels))} ({result.policy}), "
              f"{dt:.2f} s")
    return 0


def _decompress(args) -> int:
    from pcdc_jax import api
    from pcdc_jax.data import geotiff
    from pcdc_jax.data.images import read_image, write_image

    _check_output(args.output)
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".png", ".tif", ".tiff", ".bmp", ".webp"):
        from pcdc_jax.errors import PCDCError
        raise PCDCError(f"{args.output}: unsupported output format {suffix!r} (use .png or .tif)")
    data = _read_bytes(args.input)
    rt = api.load(args.model)
    steps = rt.default_steps if args.steps is None else args.steps
    t0 = time.time()
    c = rt.parse(data)
    image = api.decompress(c, rt, steps=steps, seed=args.seed, eta=args.eta, t_start=args.t_start,
                           batch=args.batch, devices=args.devices)
    dt = time.time() - t0
    if c.metadata.get(geotiff.META_KEY) and suffix not in geotiff.TIFF_SUFFIXES:
        print(f"notice: {args.input} carries GeoTIFF tags that {suffix} cannot hold; "
              "decompress to .tif to keep them", file=sys.stderr)
    write_image(args.output, image, c.metadata)
    h, w = image.shape[:2]
    msg = (f"{args.input} -> {args.output} ({w}x{h}): {8 * len(data) / (h * w):.4f} bpp, "
           f"ratio {3 * h * w / len(data):.1f}:1, {steps} steps, {dt:.2f} s")
    if args.reference:
        from pcdc_jax.metrics import evaluate
        ref = read_image(args.reference, notices=[])
        if ref.shape != image.shape:
            from pcdc_jax.errors import PCDCError
            raise PCDCError(f"reference {args.reference} is {ref.shape[1]}x{ref.shape[0]}, "
                            f"decoded image is {w}x{h}")
        msg += f", PSNR {float(evaluate(ref, image, 'psnr')['psnr'][0]):.2f} dB"
    if not args.quiet:
        print(msg)
    return 0


def _batch(args) -> int:
    from pcdc_jax import api, archive, parallel
    from pcdc_jax.data.images import IMAGE_SUFFIXES, atomic_write_bytes

    for name in ("workers", "batch", "devices", "max_open"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    decompress = args.command == "decompress-batch"
    if decompress:
        sources, refused = archive.find_inputs(args.input, (archive.PCDC_SUFFIX,), ".pcdc")
    else:
        sources, refused = archive.find_inputs(args.input, IMAGE_SUFFIXES, "image", tar=False)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    sources = archive.process_share(sources)
    rt = api.load(args.model)
    show = not args.quiet and sys.stderr.isatty()
    if decompress:
        summary = archive.decompress_batch(
            sources, args.output, rt, fmt=args.format, steps=args.steps, seed=args.seed,
            eta=args.eta, t_start=args.t_start, batch=args.batch, devices=args.devices,
            overwrite=args.overwrite, workers=args.workers, max_open=args.max_open,
            progress=show, refused=refused)
    else:
        summary = archive.compress_batch(
            sources, args.output, rt, ratio=args.ratio, bpp=args.bpp, level=args.level,
            policy=args.policy, overwrite=args.overwrite, workers=args.workers, progress=show)
    import jax
    prefix = f"process {jax.process_index()}/{jax.process_count()}: " if jax.process_count() > 1 else ""
    print("\n".join(prefix + line for line in summary.lines()), file=sys.stderr if summary.failed else sys.stdout)
    if args.summary:
        path = Path(args.summary)
        if jax.process_count() > 1:            # one summary per process, never overwritten
            path = path.with_name(f"{path.stem}.process{jax.process_index()}{path.suffix}")
        atomic_write_bytes(path, (json.dumps(summary.to_json(), indent=2) + "\n").encode())
    return 0 if summary.ok else EXIT_FAILURE


def _info(args) -> int:
    from pcdc_jax import api, checkpoint
    from pcdc_jax.codec import bitstream
    from pcdc_jax.config import ContainerConfig
    from pcdc_jax.errors import ModelLoadError

    info = bitstream.read_header(_read_bytes(args.input), ContainerConfig().max_pixels)
    try:
        model = checkpoint.load_model(args.model or api.default_model_dir())
        d = model.cfg.diffusion
        info["model"] = {"directory": str(args.model or api.default_model_dir()),
                         "matches_file": model.fingerprint.hex() == info["model_fingerprint"],
                         "diffusion": model.unet is not None, "policy": model.policy is not None,
                         "default_steps": d.default_steps if model.unet is not None else 0,
                         "eta": d.eta, "t_start": d.t_start, "window": d.window, "overlap": d.overlap}
    except ModelLoadError as e:
        info["model"] = {"error": str(e)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{args.input}: .pcdc v{info['version']}, {info['width']}x{info['height']}, "
              f"{info['bytes']} bytes, {info['bpp']:.4f} bpp, ratio {info['ratio']:.1f}:1")
        print(f"  latent {info['latent_grid'][0]}x{info['latent_grid'][1]} blocks in "
              f"{info['tiles']} tiles of {info['tile_latent']}; levels used "
              f"{info['level_histogram']} (0 coarsest)")
        print(f"  model {info['model_fingerprint']}; hyper {info['hyper_bytes']} B, "
              f"tiles {info['tile_bytes']} B; metadata keys {sorted(info['metadata'])}")
        m = info["model"]
        if "error" in m:
            print(f"  decoder model: not loaded ({m['error']})")
        else:
            print(f"  decoder model {m['directory']}: "
                  f"{'matches this file' if m['matches_file'] else 'does NOT match this file'}; "
                  + (f"diffusion decoder, {m['default_steps']} DDIM steps by default (eta "
                     f"{m['eta']}, from t={m['t_start']}, windows {m['window']} px overlapping "
                     f"{m['overlap']})"
                     if m["diffusion"] else "no diffusion decoder (base image only)")
                  + ("; trained PPO allocation policy" if m["policy"] else "; no allocation policy"))
    return 0


def _metrics(args) -> int:
    from pcdc_jax import metrics
    from pcdc_jax.data.images import read_image
    from pcdc_jax.errors import PCDCError

    ref, img = read_image(args.reference, notices=[]), read_image(args.image, notices=[])
    if ref.shape != img.shape:
        raise PCDCError(f"{args.image} is {img.shape[1]}x{img.shape[0]}, "
                        f"reference {args.reference} is {ref.shape[1]}x{ref.shape[0]}")
    values = {k: float(v[0]) for k, v in metrics.evaluate(ref, img, args.which or metrics.ALL).items()}
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        for k, v in values.items():
            arrow = "higher is better" if metrics.HIGHER_IS_BETTER[k] else "lower is better"
            print(f"{k:<11} {v:10.4f}{' dB' if k == 'psnr' else '   '}  ({arrow})")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    logging.getLogger("absl").setLevel(logging.ERROR)
    from pcdc_jax.errors import BudgetError, PCDCError
    try:
        return {"compress": _compress, "decompress": _decompress, "compress-batch": _batch,
                "decompress-batch": _batch, "info": _info, "metrics": _metrics}[args.command](args)
    except BudgetError as e:
        print(f"pcdc {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BUDGET
    except (PCDCError, ValueError) as e:
        print(f"pcdc {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"pcdc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
