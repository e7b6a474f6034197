import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pcdc_jax import cli
from tests.conftest import ROOT


def run(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_png(tmp_path, coffee):
    p = tmp_path / "in.png"
    Image.fromarray(coffee[:50, :70]).save(p)
    return p


def test_compress_decompress_info(capsys, tmp_path, tiny_model_dir, small_png):
    f = tmp_path / "a.pcdc"
    code, out, _ = run(capsys, "compress", small_png, "-o", f, "--ratio", "8", "--model", tiny_model_dir)
    assert code == 0 and "bpp" in out and "ratio" in out
    assert f.stat().st_size <= 3 * 50 * 70 / 8
    png = tmp_path / "b.png"
    code, out, _ = run(capsys, "decompress", f, "-o", png, "--model", tiny_model_dir,
                       "--reference", small_png)
    assert code == 0 and "PSNR" in out
    assert np.asarray(Image.open(png)).shape == (50, 70, 3)
    code, out, _ = run(capsys, "info", f, "--json")
    info = json.loads(out)
    assert code == 0 and info["width"] == 70 and info["bytes"] == f.stat().st_size
    code, out, _ = run(capsys, "info", f)
    assert code == 0 and "70x50" in out


def test_diffusion_decoding_flags_and_info(capsys, tmp_path, tiny_diffusion_model_dir, small_png):
    from pcdc_jax import api
    f = tmp_path / "a.pcdc"
    assert run(capsys, "compress", small_png, "-o", f, "--level", "2", "--model", tiny_diffusion_model_dir)[0] == 0
    outs = {}
    for name, flags in {"a": ["--steps", "2", "--seed", "3", "--devices", "1", "--batch", "1"],
                        "b": ["--steps", "2", "--seed", "3", "--devices", "4", "--batch", "3"],
                        "c": ["--steps", "0"]}.items():
        png = tmp_path / f"{name}.png"
        code, out, err = run(capsys, "decompress", f, "-o", png, "--model", tiny_diffusion_model_dir, *flags)
        assert code == 0 and f"{flags[1]} steps" in out, err
        outs[name] = np.asarray(Image.open(png))
    np.testing.assert_array_equal(outs["a"], outs["b"])
    assert not np.array_equal(outs["a"], outs["c"])
    rt = api.load(tiny_diffusion_model_dir)
    np.testing.assert_array_equal(outs["c"], api.decompress(f.read_bytes(), rt, steps=0))
    code, out, _ = run(capsys, "info", f, "--model", tiny_diffusion_model_dir)
    steps = rt.cfg.diffusion.default_steps
    assert code == 0 and "matches this file" in out and f"{steps} DDIM steps by default" in out
    code, out, _ = run(capsys, "info", f, "--json", "--model", tiny_diffusion_model_dir)
    m = json.loads(out)["model"]
    assert m["matches_file"] and m["diffusion"] and m["default_steps"] == steps
    for bad in (["--steps", "-1"], ["--seed", "-5"], ["--batch", "0"], ["--devices", "9"]):
        code, out, err = run(capsys, "decompress", f, "-o", tmp_path / "bad.png",
                             "--model", tiny_diffusion_model_dir, *bad)
        assert code == 1 and err.count("\n") == 1 and not (tmp_path / "bad.png").exists(), bad


def test_gray_and_rgba_inputs_convert_with_notice(capsys, tmp_path, tiny_model_dir, coffee):
    for mode in ("L", "RGBA"):
        p = tmp_path / f"in_{mode}.png"
        Image.fromarray(coffee[:20, :20]).convert(mode).save(p)
        code, _, err = run(capsys, "compress", p, "-o", tmp_path / f"{mode}.pcdc", "--level", "2",
                           "--model", tiny_model_dir)
        assert code == 0 and "notice" in err and mode in err


def _assert_failed(code, err, tmp_path, before):
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing written, no temp files


def test_bad_inputs_fail_with_one_line_and_no_output(capsys, tmp_path, tiny_model_dir, small_png):
    good = tmp_path / "good.pcdc"
    run(capsys, "compress", small_png, "-o", good, "--level", "1", "--model", tiny_model_dir)
    data = good.read_bytes()
    (tmp_path / "trunc.pcdc").write_bytes(data[: len(data) // 2])
    (tmp_path / "foreign.pcdc").write_bytes(b"GIF89a" + bytes(100))
    (tmp_path / "notimage.png").write_bytes(b"hello")
    before = sorted(p.name for p in tmp_path.iterdir())
    m = ("--model", tiny_model_dir)
    cases = [
        ("decompress", tmp_path / "trunc.pcdc", "-o", tmp_path / "x.png", *m),
        ("decompress", tmp_path / "foreign.pcdc", "-o", tmp_path / "x.png", *m),
        ("decompress", tmp_path / "missing.pcdc", "-o", tmp_path / "x.png", *m),
        ("decompress", good, "-o", tmp_path / "x.jpg", *m),
        ("decompress", good, "-o", tmp_path / "x.png", "--model", tmp_path / "nomodel"),
        ("compress", tmp_path / "notimage.png", "-o", tmp_path / "x.pcdc", *m),
        ("compress", small_png, "-o", tmp_path / "x.pcdc", "--ratio", "1e6", *m),
        ("compress", small_png, "-o", tmp_path / "x.pcdc", "--level", "7", *m),
        ("compress", small_png, "-o", tmp_path / "nodir" / "x.pcdc", *m),
        ("info", tmp_path / "trunc.pcdc"),
    ]
    for argv in cases:
        code, _, err = run(capsys, *argv)
        _assert_failed(code, err, tmp_path, before)


def test_budget_failure_names_the_smallest_ratio(capsys, tmp_path, tiny_model_dir, small_png):
    code, _, err = run(capsys, "compress", small_png, "-o", tmp_path / "x.pcdc", "--ratio", "1e6",
                       "--model", tiny_model_dir)
    assert code == cli.EXIT_BUDGET and "ratio" in err and not (tmp_path / "x.pcdc").exists()


def test_console_entry_point(tmp_path, tiny_model_dir):
    """The real process: exit codes and a single stderr line."""
    r = subprocess.run([sys.executable, "-m", "pcdc_jax.cli", "decompress", str(tmp_path / "none"),
                        "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_dir)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "error" in r.stderr


def test_compress_policies(capsys, tmp_path, tiny_model_dir, small_png):
    f = tmp_path / "g.pcdc"
    code, out, _ = run(capsys, "compress", small_png, "-o", f, "--ratio", "6", "--policy", "greedy",
                       "--model", tiny_model_dir)
    assert code == 0 and "(greedy)" in out and f.stat().st_size <= 3 * 50 * 70 / 6
    code, _, err = run(capsys, "compress", small_png, "-o", tmp_path / "p.pcdc", "--ratio", "6",
                       "--policy", "ppo", "--model", tiny_model_dir)
    assert code == 1 and "no trained allocation policy" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.pcdc").exists()
    code, _, err = run(capsys, "compress", small_png, "-o", tmp_path / "q.pcdc", "--level", "2",
                       "--policy", "hf", "--model", tiny_model_dir)
    assert code == 1 and "--ratio or --bpp" in err
