"""Reports of a supermask run: `ticketlab supermask` writes report.html whose panel shows its summary (mean ± sample
std over replicates, zhou's expected mask, the random mask, the dense network) and none of the IMP panels; `ticketlab
report` prints the supermask table; an IMP run's page has no supermask panel."""

import math
import re
import shutil

import pytest
from test_html import run_dir  # noqa: F401 -- the module's finished two-replicate IMP run

from ticketlab import supermask_run as SR
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.report.html import render
from ticketlab.report.strong_panels import supermask_panel, supermask_report, supermask_rows
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv

TINY = (
    "--dataset synthetic --model mlp --widths 16,8 --steps 20it --eval-every 20it --batch-size 50 --lr 0.01 "
    "--replicates 2 --no-progress --method edge-popup,zhou --k 0.5 --width-sweep 0.5,1"
).split()


@pytest.fixture(scope="module")
def sm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sm")
    assert main(["supermask", *TINY, "--out", str(out)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _pct(mean, std):
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def test_supermask_writes_a_report_whose_panel_shows_the_summary(sm_dir):
    page = (sm_dir / "report.html").read_text()
    rows = supermask_rows(RunDir(sm_dir))
    assert len(rows) == 2 * 2 * 5  # widths x replicates x (dense, 2 methods, their 2 random masks)
    summary = SR.summarize_rows(rows)
    written = read_csv(sm_dir / "summary.csv")  # what the command wrote: the rows read back give the same summary
    assert [float(w["test_acc_mean"]) for w in written] == [s["test_acc_mean"] for s in summary]
    h1 = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert "supermasks" in h1 and "levels" not in h1
    for heading in ("Accuracy vs weights remaining", "Matching", "Training curves", "Per-layer density", "Compute"):
        assert heading not in page  # the IMP panels have no rows for a supermask run
    assert page.index("Strong lottery tickets") < page.index("Config, versions")
    assert page.count("data:image/png;base64,") == 2  # accuracy vs k and vs width, inline
    assert "edge-popup, zhou at k = 0.5" in page and "x0.5, x1" in page and "2 replicate(s)" in page
    for s in summary:
        # two replicates: the sample std (ddof=1) is |a - b| / sqrt(2), by hand from results.csv
        a, b = (r["final_test_acc"] for r in rows if (r["width"], r["method"], r["baseline_of"]) == (s["width"],
                s["method"], s["baseline_of"]))  # fmt: skip
        assert s["n"] == 2 and math.isclose(s["test_acc_std"], abs(a - b) / math.sqrt(2))
        assert f"<td>{_pct(s['test_acc_mean'], s['test_acc_std'])}</td>" in page
        if s["method"] == "zhou":
            assert f"<td>{100 * s['expected_mean']:.2f}</td>" in page


def test_report_prints_the_supermask_table_and_exits_0(sm_dir, capsys):
    assert main(["report", str(sm_dir), "--html"]) == 0
    out = capsys.readouterr().out
    summary = SR.summarize_rows(supermask_rows(RunDir(sm_dir)))
    assert out.startswith(SR.table(summary) + "\n")
    assert "accuracy_vs_k.png" in out and "report.html" in out
    assert main(["report", str(sm_dir), "--metric", "best_test_acc"]) == 2
    assert "--metric best_test_acc" in capsys.readouterr().err


def test_no_supermask_panel_or_report_for_an_imp_run(run_dir):  # noqa: F811
    run = RunDir(run_dir)
    assert supermask_panel(run, run.rows(quiet=True)) is None
    assert supermask_report(run_dir) is None
    assert "Strong lottery tickets" not in render(run_dir)


def test_a_supermask_run_without_results_has_nothing_to_report(sm_dir, tmp_path):
    shutil.copy(sm_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(TicketlabError, match="nothing to report"):
        render(tmp_path)
    with pytest.raises(TicketlabError, match="no results.csv"):
        supermask_report(tmp_path)
