"""The HTML report: written at the end of `ticketlab imp`, self-contained, and checked in a real browser (headless
Chromium loads it from disk: a screenshot that is not blank, figures of non-zero size, no console message, and the
results table equal to results.csv)."""

import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest
from test_cli import TINY

from ticketlab.cli import main
from ticketlab.report.html import PANELS, html_report, panel, render
from ticketlab.store import read_csv

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium; .ci/run does it as root)"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished two-replicate run made by the CLI, which writes its report.html at the end."""
    out = tmp_path_factory.mktemp("runs")
    args = [a if a != "1" else "2" for a in TINY]  # --replicates 2: the bands and the verdict need a spread
    assert main(["imp", *args, "--out", str(out)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_imp_writes_a_self_contained_report_titled_by_model_and_dataset(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    h1 = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert "mlp on synthetic" in h1 and "2 replicate(s)" in h1 and run_dir.name.split("-")[-1] not in h1
    # nothing to fetch: no external file, script, stylesheet or URL
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert "<script" not in page and "<link" not in page and not re.search(r"url\((?!#)", page)
    for heading in ("Accuracy vs weights remaining", "Matching", "Training curves", "Per-layer density"):
        assert heading in page
    assert page.count("<svg") >= 4


def test_a_registered_panel_joins_the_page_and_one_without_data_is_left_out(run_dir):
    @panel("An analysis added later")
    def later(run, rows):
        return f"<p id='later'>{len(rows)} rows</p>"

    @panel("Nothing to show")
    def empty(run, rows):
        return None

    try:
        page = render(run_dir)
    finally:
        del PANELS[-2:]
    rows = read_csv(run_dir / "results.csv")
    assert f"<p id='later'>{len(rows)} rows</p>" in page and "Nothing to show" not in page


class _Dom(HTMLParser):
    """The figures' sizes and the cells of the results table, from the DOM Chromium dumps."""

    def __init__(self):
        super().__init__()
        self.figures: list[dict[str, str]] = []
        self.table: list[list[str]] = []
        self.in_results = self.in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("svg", "img"):
            self.figures.append({"tag": tag, **attrs})
        if tag == "table" and "results" in (attrs.get("class") or ""):
            self.in_results = True
        if self.in_results and tag == "tr":
            self.table.append([])
        if self.in_results and tag in ("td", "th"):
            self.in_cell = True
            self.table[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_results = False
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell:
            self.table[-1][-1] += data


def _size(value) -> float:
    match = re.match(r"([0-9.]+)", value or "")
    return float(match.group(1)) if match else 0.0


@needs_chromium
def test_the_report_renders_in_headless_chromium(run_dir, tmp_path):
    page = html_report(run_dir, tmp_path / "page.html")  # --out: anywhere, still self-contained
    url = page.resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr"]
    flags += ["--v=0"]
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*flags, "--window-size=1200,2000", f"--screenshot={shot}", url], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert shot.exists(), proc.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3].reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50  # figures and text drawn, not one colour
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    # the page has no script, so any console line (an error, a resource it could not load) is a fault
    console = [line for line in proc.stderr.splitlines() + dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    parsed = _Dom()
    parsed.feed(dom.stdout)
    assert len(parsed.figures) >= 4
    for fig in parsed.figures:
        assert _size(fig.get("width")) > 0 and _size(fig.get("height")) > 0, fig
    csv_rows = read_csv(run_dir / "results.csv")
    head, *cells = parsed.table
    assert len(cells) == len(csv_rows) == 2 * (1 + 2 * 3)  # replicates x (dense + levels x trunk branches)
    for shown, row in zip(cells, csv_rows):
        assert dict(zip(head, shown)) == {k: v for k, v in row.items() if k in head}
        assert all(float(row[c]) == float(dict(zip(head, shown))[c]) for c in ("density", "final_test_acc"))


def test_the_page_says_what_the_jobs_trained_on(tmp_path):
    import torch
    from conftest import tiny_config

    from ticketlab.data import load_dataset
    from ticketlab.imp import run_imp
    from ticketlab.problem import registry_problem
    from ticketlab.report.html import render
    from ticketlab.store import read_record

    cfg = tiny_config(imp={"levels": 1, "baselines": ()})
    run = run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path, quiet=True)
    said = read_record(run.job(0, 1, "ticket").result)["trained_on"]
    assert said.startswith("cpu (") and f"torch {torch.__version__}" in said
    assert f"Trained on: {said} (2 jobs)" in render(tmp_path)
