"""The evaluation suite: Bjontegaard deltas against hand-computed values, codecs at a byte budget,
summaries and Table I, and eval/rd.py, eval/ablate_steps.py and eval/report.py end to end on three
tiny images (the report loaded in headless Chromium)."""
import csv
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from pcdc_jax.evaluation import bd, codecs, rd, report
from tests.conftest import SAMPLES, load_script



# ---- Bjontegaard deltas: cases whose answer is known in closed form ---------------------------

def test_bd_rate_constant_rate_ratio_is_exact():
    """Test needs 0.9x the anchor's rate at every quality: BD-rate = -10%, BD-PSNR > 0."""
    rate = np.array([0.25, 0.5, 1.0, 2.0])
    psnr = np.array([28.0, 31.0, 34.5, 38.0])
    for method in ("cubic", "pchip"):
        assert bd.bd_rate(rate, psnr, 0.9 * rate, psnr, method) == pytest.approx(-10.0, abs=1e-9)
        assert bd.bd_rate(rate, psnr, rate, psnr, method) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_linear_curves_by_hand():
    """Anchor ln r = 0.1 q, test ln r = 0.2 q - c on q in [30, 40]. The mean of the difference
    (0.1 q - c) over [30, 40] is 3.5 - c: c = 3.5 crosses with BD-rate 0; c = 4 gives
    100 (exp(-0.5) - 1) = -39.347%."""
    q = np.array([30.0, 33.0, 36.0, 40.0])
    anchor = np.exp(0.1 * q)
    assert bd.bd_rate(anchor, q, np.exp(0.2 * q - 3.5), q) == pytest.approx(0.0, abs=1e-9)
    assert bd.bd_rate(anchor, q, np.exp(0.2 * q - 4.0), q) == pytest.approx(100 * math.expm1(-0.5), abs=1e-9)
    # only the overlap counts: test covers q in [35, 45] at half the rate -> -50% exactly
    q2 = q + 5
    assert bd.bd_rate(anchor, q, 0.5 * np.exp(0.1 * q2), q2) == pytest.approx(-50.0, abs=1e-9)
    # disjoint quality ranges: no BD-rate
    assert bd.bd_rate(anchor, q, anchor, q + 20) is None


def test_bd_quality_and_lower_is_better_metrics():
    """BD-PSNR of a curve 1 dB above the anchor at every rate is +1 dB; for LPIPS (lower is better)
    a test that needs half the rate for every LPIPS value has BD-rate -50% too."""
    r = np.array([0.2, 0.4, 0.8, 1.6])
    assert bd.bd_quality(r, 10 * np.log(r) + 30, r, 10 * np.log(r) + 31) == pytest.approx(1.0, abs=1e-9)
    lp = np.array([0.4, 0.3, 0.2, 0.12])
    assert bd.bd_rate(r, lp, r / 2, lp) == pytest.approx(-50.0, abs=1e-9)


def test_rate_at_quality():
    rate, q = np.array([0.5, 1.0, 2.0]), np.array([28.0, 30.0, 34.0])
    # 31 dB lies a quarter of the way from (1, 30) to (2, 34) in quality: rate 2**0.25 in log-rate
    assert bd.rate_at_quality(rate, q, 31.0) == (pytest.approx(2 ** 0.25), False)
    assert bd.rate_at_quality(rate, q, 27.0) == (0.5, True)             # reached at the lowest rate
    assert bd.rate_at_quality(rate, q, 35.0) is None
    assert bd.rate_at_quality(rate, [0.5, 0.3, 0.2], 0.25, higher_is_better=False) == (
        pytest.approx(math.sqrt(2)), False)
    with pytest.raises(ValueError, match="at least 2"):
        bd.bd_rate([1.0], [30.0], [1.0, 2.0], [30.0, 31.0])


def test_summarize_compares_on_common_images_and_builds_table1():
    def row(image, method, ratio, bpp, psnr):
        return {"image": image, "method": method, "target_ratio": ratio, "bytes": None if bpp is None else 1,
                "bpp": bpp, "psnr": psnr, "encode_s": 0.1, "decode_s": 0.1}
    rows = []
    for ratio, (ba, pa, bb, pb) in {8: (2.0, 36.0, 1.6, 36.0), 16: (1.0, 32.0, 0.8, 32.0),
                                    32: (0.5, 28.0, 0.4, 28.0), 64: (0.25, 25.0, 0.2, 25.0)}.items():
        for im in ("a", "b"):
            rows += [row(im, "anchor", ratio, ba, pa), row(im, "test", ratio, bb, pb)]
    rows += [row("c", "anchor", 8, 2.0, 40.0), row("c", "test", 8, None, None),     # c: test cannot fit
             {**row("a", "x=test", 8, 9.0, 99.0), "crop_only": True}]
    s = rd.summarize(rows, ["anchor", "test"], ["psnr"], anchor="anchor", thresholds={"psnr": 30.0})
    p8 = s["curves"]["anchor"][0]
    assert p8["images"] == 2 and p8["left_out"] == ["c"] and p8["psnr"] == 36.0   # c left out for all
    assert s["bd_rate"]["test"]["psnr"] == pytest.approx(-20.0, abs=1e-6)
    t = s["table1"]["psnr"]
    assert t["anchor"]["ratio"] == pytest.approx(24 / (0.5 * 2 ** 0.5)) and not t["anchor"]["at_least"]
    assert "| test |" in rd.markdown_table1(s) and "-20.0" in rd.markdown_bd(s, ["psnr"])


class _Fake(codecs.Codec):
    """Writes `fill` of the budget; decodes to the image with noise scaled by 1/size."""

    def __init__(self, name, fill, image):
        self.name, self.label, self.fill, self.image, self.calls = name, name, fill, image, []

    def encode(self, image, max_bytes):
        self.calls.append(max_bytes)
        return bytes(int(max_bytes * self.fill))

    def decode(self, data):
        return np.clip(self.image.astype(int) + (np.arange(self.image.size) % 3).reshape(self.image.shape)
                       * (1000 // len(data)), 0, 255).astype(np.uint8)


def test_measure_matches_the_anchor_to_our_file_and_resumes(tmp_path):
    image = np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"))[:32, :48].copy()
    ours, anchor = _Fake("pcdc:x@0", 0.5, image), _Fake("hevc", 1.0, image)
    rows = rd.measure([("a.png", image)], [ours, anchor], [4, 8], ["psnr"], crops_dir=tmp_path,
                      crop_ratios=[8], match=("pcdc:x@0", anchor), log=lambda s: None)
    by = {(r["method"], r["target_ratio"]): r for r in rows}
    full = 3 * 32 * 48 // 8
    assert by[("hevc", 8)]["bytes"] == full and by[("pcdc:x@0", 8)]["bytes"] == full // 2
    assert by[("hevc=pcdc:x@0", 8)]["bytes"] == full // 2 and by[("hevc=pcdc:x@0", 8)]["crop_only"]
    assert ("hevc=pcdc:x@0", 4) not in by                                   # only at the crop ratio
    assert by[("hevc", 8)]["psnr"] > by[("hevc=pcdc:x@0", 8)]["psnr"]       # scored per reconstruction
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a__hevc=pcdc-x-0__r8.png", "a__hevc__r8.png", "a__original.png", "a__pcdc-x-0__r8.png"]
    seen = []
    again = rd.measure([("a.png", image)], [ours, anchor], [4, 8], ["psnr"], crops_dir=tmp_path, crop_ratios=[8],
                       match=("pcdc:x@0", anchor), done=rows[:3], on_row=seen.append, log=lambda s: None)
    def strip(rs):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]
    assert again[:3] == rows[:3] and seen == again[3:]                      # only the rest measured anew
    assert strip(again) == strip(rows) and anchor.calls == [1152, 288, 576, 288, 576]   # match, then the budget


# ---- codecs at a byte budget -------------------------------------------------------------------

def test_best_within_binary_search():
    sizes = {q: 10 * q for q in range(1, 101)}
    assert len(codecs.best_within(lambda q: b"x" * sizes[q], list(range(1, 101)), 555)) == 550
    assert codecs.best_within(lambda q: b"x" * sizes[q], list(range(1, 101)), 5) is None


@pytest.fixture(scope="module")
def odd_image():
    return np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"))[100:137, 200:253].copy()   # 37x53


@pytest.mark.parametrize("name", codecs.CLASSICAL)
def test_classical_codec_fits_the_budget(name, odd_image):
    try:
        c = codecs.get(name)
    except codecs.Unavailable as e:
        pytest.skip(str(e))
    budget = odd_image.size // 8                      # ratio 8
    data = c.encode(odd_image, budget)
    assert data is not None and len(data) <= budget
    out = c.decode(data)
    assert out.shape == odd_image.shape and out.dtype == np.uint8
    mse = np.mean((out.astype(float) - odd_image) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 24
    assert c.encode(odd_image, 8) is None             # below every quality setting's size


def test_modern_codecs_beat_jpeg_at_2_bpp():
    """A guard on each codec's configuration (JPEG 2000 without its colour transform, say, loses
    up to 9 dB): at ratio 12 on a 192x256 natural crop every later codec beats JPEG's PSNR."""
    im = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))[100:292, 100:356].copy()

    def psnr(c):
        out = c.decode(c.encode(im, im.size // 12))
        return 10 * np.log10(255 ** 2 / np.mean((out.astype(float) - im) ** 2))
    available = codecs.available(codecs.CLASSICAL, log=lambda s: None)
    base = psnr(codecs.get("jpeg"))
    assert base > 33
    for c in available:
        if c.name != "jpeg":
            assert psnr(c) > base + 0.5, c.name


def test_hevc_round_trip_is_near_lossless_at_qp0(odd_image):
    try:
        c = codecs.get("hevc")
    except codecs.Unavailable as e:
        pytest.skip(str(e))
    out = c.decode(c.encode(odd_image, 10 ** 7))      # the budget admits QP 0
    assert 10 * np.log10(255 ** 2 / np.mean((out.astype(float) - odd_image) ** 2)) > 40


def test_unavailable_and_unknown_codecs(monkeypatch, tiny):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(codecs.Unavailable, match="ffmpeg"):
        codecs.get("hevc")
    logged = []
    assert codecs.available(["hevc", "jpeg"], log=logged.append)[0].name == "jpeg" and "hevc" in logged[0]
    with pytest.raises(ValueError, match="unknown codec"):
        codecs.get("bpg")
    with pytest.raises(codecs.Unavailable, match="no trained allocation policy"):
        codecs.get("pcdc:ppo", tiny)                  # the tiny model has no policy
    assert codecs.get("pcdc:greedy@0", tiny).name == "pcdc:greedy@0"


# ---- the scripts end to end on three tiny images ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_images")
    im = np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"))
    for i, (y, x, h, w) in enumerate([(40, 60, 64, 96), (150, 250, 80, 64), (200, 100, 48, 112)]):
        Image.fromarray(im[y:y + h, x:x + w]).save(d / f"tiny{i}.png")
    return d


def test_rate_proxy_script(tiny_images, tiny_model_dir, tmp_path, capsys):
    """The training proxy against the coded rate, per level, on the images' 64x64 corners (the
    48-pixel-high one is left out)."""
    script = load_script("rate_proxy")
    out = tmp_path / "proxy.json"
    script.main(["--model", str(tiny_model_dir), "--data", str(tiny_images), "--crop", "64", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["level"] for r in rows] == list(range(5))
    coded = [r["coded_bpp"] for r in rows]
    assert all(a < b for a, b in zip(coded, coded[1:])) and coded[0] > 0     # finer levels cost more
    for r in rows:
        assert r["proxy_bpp"] > 0 and r["ratio"] == pytest.approx(r["proxy_bpp"] / r["coded_bpp"])
    assert "| 4 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--model", str(tiny_model_dir), "--data", str(tiny_images), "--crop", "50"])
    assert "multiple of 64" in capsys.readouterr().err


@pytest.fixture(scope="module")
def rd_run(tiny_images, tiny_model_dir, tmp_path_factory):
    script = load_script("rd")
    out = tmp_path_factory.mktemp("rd")
    argv = ["--data", str(tiny_images), "--out", str(out), "--model", str(tiny_model_dir),
            "--methods", "pcdc:uniform", "pcdc:greedy", "jpeg", "webp", "hevc", "--ratios", "4", "8", "16",
            "--steps", "0", "--metrics", "psnr", "lpips_alex", "--table", "psnr=26", "lpips_alex=0.3"]
    script.main(argv)
    return out, script, argv


def test_rd_script_outputs(rd_run):
    out, script, argv = rd_run
    s = json.loads((out / "summary.json").read_text())
    names = s["methods"]
    assert names[:2] == ["pcdc:uniform@0", "pcdc:greedy@0"] and "jpeg" in names
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    coded = [r for r in rows if r["bytes"]]
    assert all(int(r["bytes"]) <= int(r["max_bytes"]) for r in coded)             # never over budget
    assert all(float(r["bpp"]) == pytest.approx(8 * int(r["bytes"]) / (int(r["height"]) * int(r["width"])))
               for r in coded)
    assert {r["image"] for r in rows} == {"tiny0.png", "tiny1.png", "tiny2.png"}
    assert all(len(s["curves"][m]) >= 2 for m in names)
    hevc_ok = "hevc" in names
    if hevc_ok:
        assert set(s["bd_rate"]) == set(names) - {"hevc"} and s["bd_rate"]["jpeg"]["psnr"] is not None
        assert s["crop_match"] == "hevc=pcdc:uniform@0"
        matched = [r for r in rows if r["method"] == "hevc=pcdc:uniform@0"]
        ours = {r["image"]: int(r["bytes"]) for r in coded if r["method"] == "pcdc:uniform@0"
                and float(r["target_ratio"]) == 8}
        assert matched and all(int(r["max_bytes"]) == ours[r["image"]] for r in matched)
    assert set(s["table1"]) == {"psnr", "lpips_alex"}
    for p in s["plots"]:
        assert Image.open(out / p).size[0] > 300
    assert len(list((out / "crops").glob("*.png"))) >= 3 * (1 + len(names))
    assert "Table I" in (out / "tables.md").read_text()
    n = len((out / "rows.jsonl").read_text().splitlines())
    script.main(argv)                                  # a rerun resumes: nothing is measured again
    assert len((out / "rows.jsonl").read_text().splitlines()) == n


def test_rd_script_chosen_images(rd_run, tmp_path, capsys):
    """--images keeps the named files of --data (here all measured already, so read back from the
    copied journal); a name that is not there is refused before anything runs."""
    out, script, argv = rd_run
    shutil.copytree(out, tmp_path / "rd")
    argv = [str(tmp_path / "rd") if a == str(out) else a for a in argv]
    script.main(argv + ["--images", "tiny2.png", "tiny0.png"])
    assert json.loads((tmp_path / "rd" / "summary.json").read_text())["images"] == ["tiny0.png", "tiny2.png"]
    with pytest.raises(SystemExit):
        script.main(argv + ["--images", "tiny0.png", "nothere.png"])
    err = capsys.readouterr().err
    assert "not in" in err and "nothere.png" in err and "tiny0.png" not in err.splitlines()[-1]
    with pytest.raises(SystemExit):                   # an empty folder: one line, no traceback
        script.main(["--data", str(tmp_path / "rd" / "methods"), "--out", str(tmp_path / "x")])
    assert "no images" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ablation(tiny_images, tiny_diffusion_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "ablate.json"
    load_script("ablate_steps").main(["--model", str(tiny_diffusion_model_dir), "--data", str(tiny_images),
                                  "--level", "1", "--steps", "0", "1", "2", "--metrics", "psnr", "lpips_alex",
                                  "--out", str(out)])
    return out


def test_ablate_steps_writes_rows_and_plot(ablation):
    a = json.loads(ablation.read_text())
    assert [r["steps"] for r in a["rows"]] == [0, 1, 2] and len(a["images"]) == 3
    assert all(np.isfinite(r["psnr"]) and r["s_per_mp"] > 0 for r in a["rows"])
    assert Image.open(ablation.with_suffix(".png")).size[0] > 500


def test_report_loads_every_image_in_chromium(rd_run, ablation, tmp_path):
    out = rd_run[0]
    det = tmp_path / "det.json"
    det.write_text(json.dumps({"data": "tiny", "table": "| method | count ratio |\n|---|---|\n| jpeg | 1.0 |",
                               "notes": ["no detections on tiny0.png"]}))
    page = report.build(tmp_path / "report.html", [out], [ablation], [det])
    text = page.read_text()
    assert "Table I" in text and "Sampling steps" in text and "count ratio" in text
    s = json.loads((out / "summary.json").read_text())
    expected = len(s["plots"]) + 1 + 3 * 4 if "hevc" in s["methods"] else None     # + ablation plot + crops
    try:
        result = report.browser_check(page)
    except FileNotFoundError as e:
        pytest.skip(f"{e}: the page was written but not loaded in a browser")
    loaded, total = map(int, result.split()[2].split("/"))
    assert loaded == total and "missing" not in result
    if expected:
        assert total == expected
    (page.parent / "report_files" / sorted((page.parent / "report_files").iterdir())[0].name).unlink()
    assert "missing" in report.browser_check(page)     # the check does notice a missing image
