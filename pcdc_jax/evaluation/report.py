"""One static HTML page of an evaluation: the rate-distortion tables and plots of `eval/rd.py`
runs, side-by-side crops (original, ours, the anchor codec at the same budget), the sampling-step
ablation and the detection study. No server: the page and a folder of its images beside it.

    report.build("outputs/report.html", rd_dirs=["outputs/rd_kodak"], ablations=[...], detections=[...])

The page checks itself: once loaded, a script counts the images that decoded and writes the
result into ``<pre id="image-check">``, which a headless browser's DOM dump shows
(`tests/test_eval.py` loads it in Chromium).
"""
from __future__ import annotations

import csv
import datetime
import html
import json
import shutil
from pathlib import Path
from typing import Sequence

from pcdc_jax.data.images import atomic_write_bytes
from pcdc_jax.evaluation import rd

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots img{width:580px;max-width:100%;border:1px solid #ddd}
.crops{display:flex;gap:6px;margin:6px 0 14px;flex-wrap:wrap}
.crops figure{margin:0}.crops img{width:256px;height:256px;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:12px;color:#444;max-width:256px}.note{color:#555}
.plots img.wide{width:100%}#image-check{color:#888;font-size:11px}
"""
CHECK = """<pre id="image-check">not checked</pre>
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.getElementById("image-check").textContent =
    "images loaded " + (imgs.length - bad.length) + "/" + imgs.length +
    bad.map(function (i) { return "\\nmissing " + i.getAttribute("src"); }).join("");
});
</script>"""


def markdown_table(md: str) -> str:
    """The pipe tables of a markdown text as HTML; other lines as paragraphs."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], rows[2:] if len(rows) > 1 and set(rows[1][0]) <= set("-: ") else rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                 for r in body) + "</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.strip():
            out.append(f"<p class='note'>{html.escape(line.lstrip('#- '))}</p>")
    flush()
    return "\n".join(out)


class _Assets:
    """Copies images into the page's folder under unique names; returns their relative links."""

    def __init__(self, page: Path):
        self.dir = page.with_name(page.stem + "_files")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.n = 0

    def __call__(self, src: Path) -> str:
        self.n += 1
        name = f"{self.n:04d}_{src.name}"
        shutil.copyfile(src, self.dir / name)
        return f"{self.dir.name}/{name}"


def _rd_section(d: Path, asset, crop_methods: Sequence[str] | None) -> str:
    s = json.loads((d / "summary.json").read_text())
    which = s["metrics"]
    parts = [f"<h2>Rate-distortion: {html.escape(s['data'])} ({len(s['images'])} images)</h2>"]
    if s["table1"]:
        parts += ["<h3>Compression ratio needed for a quality (Table I; higher is better)</h3>",
                  markdown_table(rd.markdown_table1(s))]
    if s["bd_rate"]:
        parts += [f"<h3>Bjontegaard deltas against {html.escape(s['anchor'])}</h3>", markdown_table(rd.markdown_bd(s, which))]
    parts.append("<div class='plots'>" + "".join(
        f"<img src='{asset(d / p)}' alt='rate-distortion, {p}'>" for p in s["plots"]) + "</div>")
    parts += ["<details><summary>All points</summary>", markdown_table(rd.markdown_curves(s, which)), "</details>"]
    ours = next((m for m in s["methods"] if m.startswith("pcdc")), None)
    methods = list(crop_methods or [ours, s.get("crop_match") or s["anchor"], s["anchor"]])
    labels = dict(s["labels"])
    if s.get("crop_match"):
        other, _, m = s["crop_match"].partition("=")
        labels[s["crop_match"]] = f"{labels.get(other, other)} at the size of {m}'s file"
    # (no anchor when its codec was missing on the machine: anchor and crop_match are then None)
    methods = [m for i, m in enumerate(methods)
               if m and m in (*s["methods"], s.get("crop_match")) and m not in methods[:i]]
    with open(d / "per_image.csv", newline="") as f:
        rows = {(r["image"], r["method"], float(r["target_ratio"])): r for r in csv.DictReader(f)}
    for ratio in s["crop_ratios"]:
        parts.append(f"<h3>Crops at ratio {ratio:g}: the most detailed 256x256 window of each image, "
                     "each method within the ratio's byte budget, and the anchor also at our file's size</h3>")
        for im in s["images"]:
            cells = [("original", rd.crop_name(im, "original"), "")]
            for m in methods:
                r = rows.get((im, m, float(ratio)))
                cap = (f"{float(r['bpp']):.3f} bpp, {float(r['psnr']):.2f} dB" if r and r.get("bytes") and r.get("psnr")
                       else "could not fit the budget")
                cells.append((labels.get(m, m), rd.crop_name(im, m, ratio), cap))
            figs = [f"<figure><img src='{asset(d / 'crops' / f)}' alt='{html.escape(label)}'>"
                    f"<figcaption>{html.escape(im)}: {html.escape(label)}{'<br>' + cap if cap else ''}</figcaption></figure>"
                    for label, f, cap in cells if (d / "crops" / f).exists()]
            parts.append("<div class='crops'>" + "".join(figs) + "</div>")
    if s["notes"]:
        parts.append("<ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in s["notes"]) + "</ul>")
    return "\n".join(parts)


def _ablation_section(path: Path, asset) -> str:
    a = json.loads(path.read_text())
    rows = a["rows"]
    keys = [k for k in rows[0] if k not in ("steps", "eta", "t_start", "bpp", "s_per_mp", "seam_ratio")]
    md = "\n".join(["| steps | " + " | ".join(rd.LABELS.get(k, k) for k in keys) + " | seam ratio | decode s/MP |",
                    "|---|" + "---|" * (len(keys) + 2)]
                   + [f"| {r['steps']} | " + " | ".join(f"{r[k]:.4f}" for k in keys)
                      + f" | {r['seam_ratio'] if r['seam_ratio'] is None else format(r['seam_ratio'], '.3f')}"
                      f" | {r['s_per_mp']:.2f} |" for r in rows])
    target = f"level {a['level']}" if a.get("ratio") is None else f"ratio {a['ratio']:g}"
    parts = [f"<h2>Sampling steps: {html.escape(a['data'])} ({len(a['images'])} images, {target}, "
             f"{rows[0]['bpp']:.3f} bpp)</h2>", markdown_table(md)]
    png = path.with_suffix(".png")
    if png.exists():
        parts.append(f"<div class='plots'><img class='wide' src='{asset(png)}' alt='sampling-step ablation'></div>")
    return "\n".join(parts)


def _detection_section(path: Path) -> str:
    d = json.loads(path.read_text())
    parts = [f"<h2>Detection on reconstructions: {html.escape(str(d.get('data', path.stem)))}</h2>"]
    if d.get("table"):
        parts.append(markdown_table(d["table"]))
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in d.get("notes", [])]
    return "\n".join(parts)


def build(page: str | Path, rd_dirs: Sequence = (), ablations: Sequence = (), detections: Sequence = (),
          crop_methods: Sequence[str] | None = None, title: str = "pcdc-jax evaluation") -> Path:
    """Write the page (and its `<stem>_files/` folder of images); returns its path."""
    page = Path(page)
    asset = _Assets(page)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='note'>Generated {datetime.datetime.now():%Y-%m-%d %H:%M}. bpp is from real file sizes; "
            "every method of a study is given the same byte budget per image.</p>"]
    body += [_rd_section(Path(d), asset, crop_methods) for d in rd_dirs]
    body += [_ablation_section(Path(a), asset) for a in ablations]
    body += [_detection_section(Path(d)) for d in detections]
    text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n" + CHECK + "\n</body></html>\n")
    atomic_write_bytes(page, text.encode())
    return page


def browser_check(page: str | Path, chromium: str | None = None, timeout: float = 120) -> str:
    """Load the page in headless Chromium and return its self-check line ("images loaded N/M",
    then a "missing SRC" line per image that did not decode). Raises FileNotFoundError when no
    Chromium is installed (Debian: apt-get install chromium)."""
    import re
    import subprocess
    import tempfile

    exe = chromium or next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")
                            if shutil.which(c)), None)
    if not exe:
        raise FileNotFoundError("no chromium binary on PATH")
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--allow-file-access-from-files",
                            "--virtual-time-budget=20000", "--dump-dom", Path(page).resolve().as_uri()],
                           capture_output=True, text=True, timeout=timeout)
    m = re.search(r'<pre id="image-check">(.*?)</pre>', p.stdout, re.S)
    if not m:
        raise RuntimeError(f"chromium did not render the page (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    return html.unescape(m.group(1))
