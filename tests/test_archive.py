"""Batch compression and decompression of archives: equality with single files, faults, resume,
device counts, tar and glob inputs, GeoTIFF tags, and two processes splitting an archive."""
import json
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tifffile
from PIL import Image

from pcdc_jax import api, archive, cli
from pcdc_jax.data import geotiff
from pcdc_jax.data.images import read_image, to_uint8
from pcdc_jax.errors import PCDCError, PCDCFormatError
from tests.conftest import ROOT, free_port, load_script, sample_image, subprocess_env

STEPS = 2
# Sizes with 1 window and with several (tiny preset: 128-pixel windows), so windows of
# different files share batches and some files have their own crop sizes.
SIZES = [(40, 60), (200, 300), (128, 128), (70, 260), (150, 150)]


def run(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory, tiny_diffusion):
    """Good .pcdc files of several sizes, one in a subfolder."""
    d = tmp_path_factory.mktemp("archive")
    img = np.tile(sample_image(), (2, 2, 1))
    for i, (h, w) in enumerate(SIZES):
        name = d / ("sub" if i == 1 else "") / f"img{i}.pcdc"
        name.parent.mkdir(exist_ok=True)
        name.write_bytes(api.compress(img[17 * i:17 * i + h, :w], tiny_diffusion, level=2).data)
    return d


@pytest.fixture(scope="module")
def singles(archive_dir, tiny_diffusion):
    """Each file decoded alone with `api.decompress`."""
    return {p.relative_to(archive_dir).with_suffix("").as_posix():
            api.decompress(p.read_bytes(), tiny_diffusion, steps=STEPS, seed=3)
            for p in sorted(archive_dir.rglob("*.pcdc"))}


def outputs(out_dir, suffix=".png") -> dict:
    return {p.relative_to(out_dir).with_suffix("").as_posix(): read(p)
            for p in sorted(out_dir.rglob(f"*{suffix}"))}


def no_temporaries(out_dir) -> bool:
    return not [p for p in out_dir.rglob("*") if p.name.startswith(".")]


def test_bad_files_are_listed_and_the_rest_decodes_like_single_files(
        capsys, tmp_path, archive_dir, singles, tiny_diffusion_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    for p in archive_dir.rglob("*.pcdc"):
        (src / p.relative_to(archive_dir)).parent.mkdir(exist_ok=True, parents=True)
        (src / p.relative_to(archive_dir)).write_bytes(p.read_bytes())
    good = (archive_dir / "img0.pcdc").read_bytes()
    (src / "truncated.pcdc").write_bytes(good[:len(good) // 2])
    (src / "sub" / "foreign.pcdc").write_bytes((ROOT / "samples" / "coffee.png").read_bytes()[:5000])
    (src / "notes.txt").write_text("not an input")
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    code, _, err = run(capsys, "decompress-batch", src, "-o", out, "--model", tiny_diffusion_model_dir,
                       "--steps", STEPS, "--seed", 3, "--batch", 3, "--quiet", "--summary", summary)
    assert code == cli.EXIT_FAILURE
    assert "failed: truncated.pcdc: truncated file" in err and "failed: sub/foreign.pcdc: not a .pcdc" in err
    s = json.loads(summary.read_text())
    assert (s["done"], s["skipped"], s["total"]) == (len(SIZES), 0, len(SIZES) + 2)
    assert sorted(f["file"] for f in s["failed"]) == ["sub/foreign.pcdc", "truncated.pcdc"]
    got = outputs(out)
    assert sorted(got) == sorted(singles) and no_temporaries(out)       # nothing for the bad ones
    for k, v in singles.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_same_output_on_1_and_4_devices(tmp_path, archive_dir, singles,
                                                                   tiny_diffusion_model_dir):
    sources, _ = archive.find_inputs(str(archive_dir), (".pcdc",), ".pcdc")
    results = {}
    for devices, batch in ((1, 1), (4, 8)):
        rt = api.Runtime(api.load(tiny_diffusion_model_dir).model)       # fresh call counters
        out = tmp_path / f"d{devices}"
        s = archive.decompress_batch(sources, out, rt, steps=STEPS, seed=3, devices=devices,
                                     batch=batch, workers=2, max_open=3)
        assert s.ok and s.done == len(SIZES) and 0 < s.device_busy <= 1
        results[devices] = outputs(out)
    for k, v in singles.items():
        np.testing.assert_array_equal(results[1][k], v, err_msg=k)
        np.testing.assert_array_equal(results[4][k], v, err_msg=k)


def test_stream_bounds_open_images(tiny_diffusion, archive_dir):
    dec = tiny_diffusion.decoder(4)
    stream = dec.stream(steps=0, batch=4, max_open=2)
    done = {}
    for i, p in enumerate(sorted(archive_dir.rglob("*.pcdc")) * 3):
        c = tiny_diffusion.parse(p.read_bytes())
        stream.add(tiny_diffusion.latent(c), c.levels, tag=(i, p))
        assert stream.open <= 2
        done.update(stream.pop_done())
    stream.close()
    done.update(stream.pop_done())
    assert len(done) == 3 * len(SIZES) and stream.open == 0
    # Windows of same-sized images share batches: 6 one-window images in 2 calls of 4 windows.
    one = tiny_diffusion.parse((archive_dir / "img0.pcdc").read_bytes())
    y_hat = tiny_diffusion.latent(one)
    calls, stream = dec.calls, dec.stream(steps=0, batch=4)
    for i in range(6):
        stream.add(y_hat, one.levels, tag=i)
    stream.close()
    assert len(stream.pop_done()) == 6 and dec.calls - calls == 2
    for (i, p), canvas in done.items():
        c = tiny_diffusion.parse(p.read_bytes())
        np.testing.assert_array_equal(
            api.decompress(p.read_bytes(), tiny_diffusion, steps=0),
            to_uint8(canvas[:c.height, :c.width]))


def test_killed_run_resumes_without_redoing_finished_files(tmp_path, archive_dir, tiny_diffusion_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    img = np.tile(sample_image(), (2, 2, 1))
    rt = api.load(tiny_diffusion_model_dir)
    n = 12
    for i in range(n):
        (src / f"f{i:02d}.pcdc").write_bytes(
            api.compress(img[9 * i:9 * i + 256, :256], rt, level=2).data)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pcdc_jax.cli", "decompress-batch", str(src), "-o", str(out),
           "--model", str(tiny_diffusion_model_dir), "--steps", "6", "--batch", "4",
           "--max-open", "1", "--workers", "1", "--quiet"]
    env = subprocess_env(4)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("*.png"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert 2 <= len(finished) < n, f"killed with {len(finished)} of {n} outputs"
    # A temporary a killed writer may leave is removed by the rerun.
    stale = out / f".f{n - 1:02d}.png.abcd1234.tmp"
    stale.write_bytes(b"half an image")
    summary = tmp_path / "summary.json"
    done = subprocess.run(cmd + ["--summary", str(summary)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    s = json.loads(summary.read_text())
    assert s["skipped"] == len(finished) and s["done"] == n - len(finished)
    for name, stat in finished.items():                 # not rewritten
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stat
    assert len(list(out.glob("*.png"))) == n and no_temporaries(out)
    for name in sorted(finished)[:1] + [f"f{n - 1:02d}.png"]:
        data = (src / name).with_suffix(".pcdc").read_bytes()
        np.testing.assert_array_equal(read(out / name), api.decompress(data, rt, steps=6))


def test_tar_and_glob_inputs(capsys, tmp_path, archive_dir, singles, tiny_diffusion_model_dir):
    tar = tmp_path / "archive.tar"
    with tarfile.open(tar, "w") as t:
        for p in sorted(archive_dir.rglob("*.pcdc")):
            t.add(p, arcname="frames/" + p.relative_to(archive_dir).as_posix())
        t.add(archive_dir / "img0.pcdc", arcname="../escape.pcdc")
    out = tmp_path / "from_tar"
    code, _, err = run(capsys, "decompress-batch", tar, "-o", out, "--model", tiny_diffusion_model_dir,
                       "--steps", STEPS, "--seed", 3, "--quiet")
    assert code == cli.EXIT_FAILURE and "../escape.pcdc: path leaves the output folder" in err
    got = outputs(out / "frames")
    assert sorted(got) == sorted(singles) and not (tmp_path / "escape.png").exists()
    np.testing.assert_array_equal(got["sub/img1"], singles["sub/img1"])

    sources, refused = archive.find_inputs(str(archive_dir / "**" / "*.pcdc"), (".pcdc",), ".pcdc")
    assert [s.name for s in sources] == sorted(f"{k}.pcdc" for k in singles) and not refused
    with pytest.raises(PCDCError, match="extract it first"):
        archive.find_inputs(str(tar), (".png",), "image", tar=False)
    with pytest.raises(PCDCError, match="no .pcdc files"):
        archive.find_inputs(str(tmp_path / "nothing" / "*.pcdc"), (".pcdc",), ".pcdc")


def test_compress_batch_mirrors_paths_and_fails_alone(capsys, tmp_path, tiny_model_dir):
    src = tmp_path / "frames"
    (src / "day2").mkdir(parents=True)
    img = sample_image()
    Image.fromarray(img[:100, :150]).save(src / "a.png")
    Image.fromarray(img[50:130, :90]).save(src / "day2" / "b.jpg", quality=95)
    Image.fromarray(img[:1, :1]).save(src / "day2" / "tiny.png")     # cannot meet ratio 20
    (src / "day2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    code, _, err = run(capsys, "compress-batch", src, "-o", out, "--ratio", 20, "--policy", "uniform",
                       "--model", tiny_model_dir, "--quiet")
    assert code == cli.EXIT_FAILURE
    assert "failed: day2/broken.png" in err and "failed: day2/tiny.png: cannot fit" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file()) == ["a.pcdc", "day2/b.pcdc"]
    rt = api.load(tiny_model_dir)
    for name in ("a.png", "day2/b.jpg"):
        data = (out / name).with_suffix(".pcdc").read_bytes()
        assert data == api.compress(read_image(src / name), rt, ratio=20, policy="uniform").data
    code, _, err = run(capsys, "compress-batch", src, "-o", out, "--ratio", 20, "--policy",
                       "uniform", "--model", tiny_model_dir, "--quiet")
    assert code == cli.EXIT_FAILURE and "0 compressed, 2 skipped (already complete), 2 failed of 4" in err


GEO = [(33550, 12, 3, (0.25, 0.25, 0.0)),
       (33922, 12, 6, (0.0, 0.0, 0.0, 500000.125, 4649776.5, 0.0)),
       (34264, 12, 16, tuple(float(v) for v in range(16))),
       (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)),
       (34736, 12, 2, (6378137.0, 298.257223563)),
       (34737, 2, 0, "WGS 84 / UTM zone 33N|"),
       (42112, 2, 0, '<GDALMetadata><Item name="AREA">fields</Item></GDALMetadata>'),
       (42113, 2, 0, "-9999")]


def tags_of(path) -> dict:
    with tifffile.TiffFile(path) as t:
        tags = t.pages[0].tags
        return {code: tags[code].value for code, *_ in GEO}


def test_geotiff_tags_survive_compression_and_decompression(capsys, tmp_path, tiny_model_dir):
    frames = tmp_path / "frames"
    frames.mkdir()
    tif = frames / "survey.tif"
    tifffile.imwrite(tif, sample_image()[:96, :160], photometric="rgb",
                     extratags=[(c, t, n, v, True) for c, t, n, v in GEO])
    want = tags_of(tif)
    pcdc = tmp_path / "pcdc"
    assert run(capsys, "compress-batch", frames, "-o", pcdc, "--level", 3, "--model", tiny_model_dir,
               "--quiet")[0] == 0
    code, out, _ = run(capsys, "info", pcdc / "survey.pcdc", "--json")
    assert sorted(json.loads(out)["metadata"]["geotiff"]) == sorted(str(c) for c, *_ in GEO)
    back = tmp_path / "back"
    assert run(capsys, "decompress-batch", pcdc, "-o", back, "--format", "tif", "--model",
               tiny_model_dir, "--quiet")[0] == 0
    assert tags_of(back / "survey.tif") == want
    assert read(back / "survey.tif").shape == (96, 160, 3)
    # The single-file commands keep them too; PNG cannot, and says so.
    single = tmp_path / "single.pcdc"
    assert run(capsys, "compress", tif, "-o", single, "--level", 3, "--model", tiny_model_dir)[0] == 0
    assert run(capsys, "decompress", single, "-o", tmp_path / "single.tif", "--model", tiny_model_dir)[0] == 0
    assert tags_of(tmp_path / "single.tif") == want
    code, _, err = run(capsys, "decompress", single, "-o", tmp_path / "single.png", "--model", tiny_model_dir)
    assert code == 0 and "GeoTIFF tags" in err


def test_bad_geotiff_metadata_is_a_format_error():
    with pytest.raises(PCDCFormatError, match="'33550'"):
        geotiff.extratags({"geotiff": {"33550": {"type": 12, "value": ["x"]}}})
    with pytest.raises(PCDCFormatError, match="not a geo tag"):
        geotiff.extratags({"geotiff": {"256": {"type": 3, "value": [1]}}})
    assert geotiff.extratags({"other": 1}) == []


def test_cli_policy_choices_match_the_api():
    assert cli.POLICIES == api.POLICIES


def test_two_processes_split_an_archive(tmp_path, archive_dir, singles, tiny_diffusion_model_dir):
    """jax.distributed with 2 local processes of 2 CPU devices each: every file is decoded once,
    by one process, exactly as alone."""
    out = tmp_path / "out"
    port = free_port()
    env = subprocess_env(2)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pcdc_jax.cli", "decompress-batch", str(archive_dir), "-o", str(out),
         "--model", str(tiny_diffusion_model_dir), "--steps", str(STEPS), "--seed", "3", "--quiet",
         "--summary", str(tmp_path / "s.json"), "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, results):
        assert p.returncode == 0, e
    assert [f"process {i}/2:" in results[i][0] for i in range(2)] == [True, True]
    done = [json.loads((tmp_path / f"s.process{i}.json").read_text())["done"] for i in range(2)]
    assert sorted(done) == [len(SIZES) // 2, len(SIZES) - len(SIZES) // 2]
    got = outputs(out)
    assert sorted(got) == sorted(singles)
    for k, v in singles.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_bench_archive_modes_and_table(tmp_path, tiny_diffusion_model_dir):
    """eval/bench_archive.py's per-process modes, run in this process, and its table."""
    import argparse
    bench = load_script("bench_archive")
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(sample_image()[30 * i:30 * i + 64, :96]).save(tmp_path / "images" / f"{i}.png")
    rows = []
    for mode, files in (("compress", 0), ("batch", 0), ("batch", 2), ("loop", 0)):
        rows.append(bench.child(argparse.Namespace(
            child=mode, work=str(tmp_path), model=str(tiny_diffusion_model_dir), ratio=8.0, steps=1,
            files=files, workers=None)))
    assert rows[0]["done"] == 3 and [r["files"] for r in rows[1:]] == [3, 2, 3]
    assert all(r["megapixels"] > 0 and r["mp_per_s"] > 0 for r in rows[1:])
    table = bench.table(rows, 4)
    assert table.count("\n| batch |") == 2 and "| loop | 4 | 3 |" in table
