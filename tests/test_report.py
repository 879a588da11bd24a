"""The report package: labels for people, the estimate report (HTML/Markdown) and its figures.

The slow test renders the HTML report in headless Chromium (Debian's /usr/bin/chromium) and checks
the page a person sees: title, labelled rows, decoded figures and a non-blank screenshot.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import hwfault
from hwfault import report
from hwfault.report import labels as L

RAW = ("one_step", "multi_step", "bit_search", "stuck stuck", "bitflip", "mc_mean", "mc_p01", "accuracy_mean",
       "worst_case", "severity_name")


def _text(page: str) -> str:
    """A page without its inline images (base64 could spell anything)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", page)


def _raw_keys(text: str) -> list[str]:
    return [k for k in RAW if k in text]


@pytest.fixture(scope="module")
def estimates():
    """Cheap estimates on a digital chip (bit flips) and an analog one (noise and stuck cells)."""
    return {c: hwfault.estimate("digits-mlp", "digits", c, trials=3, severities=(0.5, 1.0), per_fault=True,
                                certified=None, severity_steps=2 if c == "rram-4bit" else 0)  # both figures
            for c in ("int8-sram-0.5v", "rram-4bit")}


# ----------------------------------------------------------------------------- labels


def test_worst_case_and_fault_labels():
    assert L.worst_case("one_step") == "worst case: one step"
    assert L.worst_case("multi_step") == "worst case: multi-step"
    assert L.worst_case("bit_search") == "worst case: bit search"
    assert L.worst_case("bit_search", short=True) == "bit search"
    kinds = {"stuck": "stuck-at cells", "bitflip": "bit flips", "read": "read noise", "pcm": "PCM programming noise",
             "drift": "conductance drift", "additive": "additive programming noise",
             "multiplicative": "multiplicative programming noise", "quantization": "quantisation"}
    assert {k: L.fault_kind(k) for k in kinds} == kinds
    assert L.label("some_new_key") == "some new key" and L.fault_kind("new_kind") == "new kind"


def test_every_fault_kind_of_the_spec_has_words():
    from hwfault.spec import FAULT_KINDS

    for k in FAULT_KINDS:
        assert k in L.FAULT_KINDS, k


def test_severity_names_and_values():
    assert L.nominal("stuck", "stuck rate", 0.1079) == "stuck-at cells: stuck-cell rate 10.8%"
    assert L.nominal("bitflip", "BER", 0.0156) == "bit flips: bit error rate 1.56%"
    assert L.nominal("bitflip", "BER", 1e-7) == "bit flips: bit error rate 1e-7"
    assert L.nominal("bitflip", "flips", 1) == "bit flips: 1 flipped bit per chip"
    assert L.nominal("drift", "t (s)", 86400.0) == "conductance drift: time since programming 1 day (86,400 s)"
    assert L.nominal("read", "sigma", 0.01, {"relative_to": "max"}) == "read noise: sigma 1% of max|w| per tensor"
    assert L.nominal("multiplicative", "sigma", 0.05) == "multiplicative programming noise: sigma 5% of |w|"
    assert L.nominal("pcm", "sigma", 1.0) == "PCM programming noise: x1 the device model"
    assert "stuck stuck" not in L.nominal("stuck", "stuck rate", 0.1)


def test_numbers_and_durations():
    assert L._pct(0.9544) == "95.4" and L._pct(None) == "-" and L.pct(0.5) == "50.0%"
    assert L.duration(86400) == "1 day" and L.duration(2 * 86400) == "2 days" and L.duration(5400) == "1.5 hours"
    assert L.rate(0.0023) == "0.23%" and L.rate(1e-6) == "1e-6"


def test_report_keys_live_in_labels():
    from hwfault.analyses import harden

    assert report.REPORT_KEYS is L.REPORT_KEYS
    assert [k for k, _ in L.REPORT_KEYS] == list(harden.summary(_fake_estimate()))


def _fake_estimate() -> dict:
    acc = {"accuracy": 0.5}
    return {"clean": acc, "quantized": acc, "random": {"accuracy_mean": 0.5, "accuracy_p01": 0.4},
            "worst_case": {"one_step": acc, "multi_step": acc}}


def test_fault_words_describe_each_preset_fault():
    from hwfault.faults import Chip
    from hwfault.spec import list_chips, load_chip

    model = hwfault.load_model("digits-mlp")
    for name in list_chips():
        for f in Chip.build(load_chip(name), model).describe()["faults"]:
            words = L.fault_words(f)
            assert words.startswith(L.fault_kind(f["kind"])) and not _raw_keys(words), (name, words)


def test_package_reexports_what_callers_use():
    for name in ("write_json", "print_table", "sweep_table", "probe_table", "plot_sweep", "plot_probe",
                 "estimate_table", "plot_estimate", "write_report", "plan_table", "campaign_table", "plot_layers",
                 "write_csv", "write_parquet", "hardening_table", "plot_hardening", "certify_table", "plot_certify",
                 "_pct", "_num", "_bracket_rows", "_save_fig", "_mpl"):
        assert callable(getattr(report, name)), name


# ----------------------------------------------------------------------------- the estimate report


@pytest.mark.parametrize("chip", ["int8-sram-0.5v", "rram-4bit"])
def test_html_report_has_labels_not_keys(estimates, tmp_path, chip):
    r = estimates[chip]
    path = tmp_path / "r.html"
    report.write_report(r, path)
    page = path.read_text(encoding="utf-8")
    text = _text(page)
    assert f"<title>hwfault: digits-mlp on {chip}</title>" in page
    assert not _raw_keys(text), _raw_keys(text)
    assert "worst case: one step" in text and "worst case: multi-step" in text
    assert "certified floor &le; worst case &le; Monte-Carlo &le; clean" in text
    assert page.count("<img src=\"data:image/png;base64,") == 2  # histogram and severity curves, inline
    for f in r.to_dict()["chip"]["faults"]:
        assert L.fault_kind(f["kind"]) in text
    if chip == "rram-4bit":
        assert "stuck-at cells" in text and "stuck-cell rate" in text


def test_markdown_report_has_the_same_labels(estimates, tmp_path):
    r = estimates["rram-4bit"]
    path = tmp_path / "r.md"
    report.write_report(r, path)
    text = path.read_text(encoding="utf-8")
    assert not _raw_keys(text), _raw_keys(text)
    assert "| worst case: one step |" in text and "stuck-at cells" in text and "![" in text
    assert "certified floor <= worst case <= Monte-Carlo <= clean" in text
    assert (tmp_path / "r.png").stat().st_size > 0


def test_estimate_table_rows_carry_labels(estimates):
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report.estimate_table(estimates["rram-4bit"]))
    text = console.export_text()
    assert not _raw_keys(text) and "stuck-at cells alone" in text and "worst case: bit search" in text


def _figure_texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


@pytest.mark.parametrize("chip", ["int8-sram-0.5v", "rram-4bit"])
def test_estimate_figure_labels_and_legends(estimates, chip):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = estimates[chip].to_dict()
    fig = report.estimate_figure(d, "both")
    try:
        texts = " | ".join(_figure_texts(fig))
        assert not _raw_keys(texts), texts
        assert "stuck stuck" not in texts and "worst case: one step" in texts
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            box, leg = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
            assert leg.y1 < box.y0, "the legend lies outside (below) the axes, clear of the marks"
        sev = fig.axes[1]
        styles = {ln.get_label(): (ln.get_marker(), ln.get_linestyle()) for ln in sev.get_lines()}
        names = ["Monte-Carlo mean", "worst case: one step"]
        if None not in d["severity"]["multi_step"]:
            names.append("worst case: multi-step")
        else:  # the severity curve's multi-step worst case is computed with severity_steps > 0 only
            assert "worst case: multi-step" not in styles
        curves = [styles[k] for k in names]
        assert len(set(curves)) == len(names), curves  # each series has its own marker and line style
        lo, _ = sev.get_ylim()
        assert lo < 0, "a flat line at 0% stays inside the axes"
    finally:
        plt.close(fig)


def test_report_without_severities_or_breakdown(tmp_path):
    r = hwfault.estimate("digits-mlp", "digits", "int8-sram-0.5v", trials=2, severities=(), per_fault=False,
                         certified=None)
    report.write_report(r, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<img ") == 1 and "Each fault alone" not in page and not _raw_keys(_text(page))


# ----------------------------------------------------------------------------- in a browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")

# writes what the browser decoded of every <img> into the DOM, for --dump-dom to carry out
IMG_PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "img-probe";
  out.textContent = JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(out);
});
</script>"""


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="hwfault-chromium-")
    try:
        return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                              check=False, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_html_report_in_a_browser(estimates, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs headless Chromium at /usr/bin/chromium (apt-get install chromium)")
    import numpy as np
    from PIL import Image

    page = tmp_path / "r.html"
    report.write_report(estimates["rram-4bit"], page)
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", IMG_PROBE + "</body>"), encoding="utf-8")

    run = _chromium(probed.as_uri(), "--virtual-time-budget=10000", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert "<title>hwfault: digits-mlp on rram-4bit</title>" in dom
    text = _text(dom)
    assert not _raw_keys(text), _raw_keys(text)
    rows = re.findall(r"<td class=\"label\">([^<]*)</td>", text)
    assert {"worst case: one step", "worst case: multi-step", "worst case: bit search", "Monte-Carlo mean",
            "certified floor"} <= set(rows), rows
    probe = re.search(r'<pre id="img-probe">([^<]*)</pre>', dom)
    assert probe, "the page's load event ran"
    imgs = json.loads(probe.group(1))
    assert len(imgs) == 2 and all(ok and w > 0 and h > 0 for ok, w, h in imgs), imgs

    shot = tmp_path / "shot.png"
    run = _chromium(page.as_uri(), "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,2400")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1200, 2400)
        px = np.asarray(im.convert("L"), dtype=float)
    assert px.std() > 10 and (px < 128).mean() > 0.005, "a page with text and figures, not a blank one"
