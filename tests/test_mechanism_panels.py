"""The HTML report's panels of issue 17: signal propagation, the sanity checks and the rewind-sparsity model appear
when their files are in the run directory, show what the files hold, and a damaged fit file does not break the page."""

import pytest
from conftest import tiny_config

from ticketlab.analysis import rewind_model as RWM
from ticketlab.analysis import signal as SIG
from ticketlab.branches import run_branch
from ticketlab.data import load_dataset
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.report.html import render
from ticketlab.sanity import sanity
from ticketlab.store import read_csv

TITLES = (
    "Signal propagation at the rewind point (ticketlab analyze --signal)",
    "Sanity checks of pruning at initialisation (ticketlab sanity)",
    "Rewind-sparsity model (ticketlab analyze --rewind-model)",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("mech") / "run"
    cfg = tiny_config(imp={"levels": 2, "rewind": "10it"})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), path, batch_jobs="off")
    return path


def test_no_panel_before_its_analysis_ran(run):
    page = render(run)
    assert not any(title in page for title in TITLES)


def test_each_panel_shows_its_analysis(run):
    SIG.signal(run, device="cpu")
    sanity(run, checks=["shuffle"], device="cpu", batch_jobs="off")
    run_branch(run, "rewind", options={"to": "20it"}, batch_jobs="off", device="cpu")
    RWM.rewind_model(run)
    page = render(run)
    assert all(title in page for title in TITLES)
    signal_part = page.split(TITLES[0])[1].split("<h2")[0]
    assert signal_part.count("<svg") == 1  # the figure of signal.csv; no sparse-aware file yet
    for row in read_csv(run / "sanity.csv"):  # the table shows the file's numbers
        assert f"{100 * float(row['check_acc']):.2f} (n=1)" in page
        assert f"{100 * float(row['drop']):+.2f}" in page
    assert "k* predicted" in page and "data:image/png;base64," in page.split(TITLES[2])[1]


def test_a_damaged_fit_file_is_named_not_a_crash(run):
    (run / RWM.FIT_JSON).write_text("{not json")
    page = render(run)
    assert "cannot be read; run `ticketlab analyze RUN --rewind-model` again" in page
