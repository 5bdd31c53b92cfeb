"""``ticketlab analyze`` on a tiny IMP run: the CSVs it writes, what they hold, and when it reads them back."""

import csv
import shutil

import pytest
import torch
from conftest import tiny_config

from ticketlab import analyze as AN
from ticketlab import masks as M
from ticketlab.analysis.alignment import sign_preservation
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.report.html import render
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("imp")
    cfg = tiny_config(imp={"levels": 2, "rewind": "10it", "replicates": 2, "baselines": ("random_prune",)})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), path, batch_jobs="off")
    return path


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_the_documented_columns_with_sane_values(run, capsys):
    assert main(["analyze", str(run), "--grad-iterations", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "What tickets share" in out and "rho_ticket" in out
    rows = _csv(run / "analysis.csv")
    assert list(rows[0]) == AN.COLUMNS
    assert [(r["replicate"], r["level"]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    for r in rows:
        for m in AN.MEASURES:
            assert 0.0 <= float(r[m]) <= 1.0, (m, r[m])
    # pruning 50% a level (the output layer 25%): the density falls level to level; the dense rho is per replicate
    assert float(rows[1]["density"]) < float(rows[0]["density"]) < 1.0
    assert rows[0]["rho_dense"] == rows[1]["rho_dense"]
    # the ticket's rho is the sign preservation of its own start and trained weights, over its mask
    job, level = RunDir(run).job(0, 2, "ticket"), RunDir(run).level(0, 2)
    rho = sign_preservation(load_tensors(job.init), load_tensors(job.final), M.load_mask(level.mask))
    assert float(rows[1]["rho_ticket"]) == pytest.approx(rho)
    assert "What tickets share" in render(run)  # the HTML report's panel


def test_a_rerun_reads_the_csv_back_unless_the_inputs_change(run, monkeypatch):
    first, _ = AN.analyze(run, grad_iterations=3, device="cpu")

    def measure(*args, **kwargs):
        raise AssertionError("measured again")

    with monkeypatch.context() as m:
        m.setattr(AN, "_measure", measure)
        again, _ = AN.analyze(run, grad_iterations=3, device="cpu")
        assert again == first
        with pytest.raises(AssertionError, match="measured again"):  # another setting: another analysis
            AN.analyze(run, grad_iterations=4, device="cpu")
    # gradient alignment depends on the early gradients: measured over more iterations, it is measured again
    other, _ = AN.analyze(run, grad_iterations=4, device="cpu")
    assert [r["rho_ticket"] for r in other] == [r["rho_ticket"] for r in first]


def test_against_itself_overlaps_everywhere(run, capsys):
    assert main(["analyze", str(run), "--against", str(run), "--levels", "2", "--grad-iterations", "2"]) == 0
    assert "Mask overlap" in capsys.readouterr().out
    rows = _csv(run / "overlap.csv")
    assert list(rows[0]) == AN.OVERLAP_COLUMNS
    layers = {r["layer"] for r in rows}
    assert "all" in layers and len(layers) == 4  # three weight tensors of the MLP, and the whole mask
    assert {(r["replicate"], r["level"], r["other_level"]) for r in rows} == {("0", "2", "2"), ("1", "2", "2")}
    assert all(float(r["jaccard"]) == 1.0 and r["density"] == r["other_density"] for r in rows)


def test_overlap_pairs_the_level_of_nearest_density(run, tmp_path):
    # another "run" with one replicate and two levels: a mask keeping everything, and level 1's mask of this run
    mask = M.load_mask(RunDir(run).level(0, 1).mask)
    other = tmp_path / "other"
    M.save_mask(RunDir(other).level(0, 3).mask, {n: torch.ones_like(m) for n, m in mask.items()})
    M.save_mask(RunDir(other).level(0, 5).mask, mask)
    rows = AN.overlaps(RunDir(run), {0: [1, 2]}, [other])
    overall = {r["level"]: r for r in rows if r["layer"] == "all"}
    assert overall[1]["other_level"] == 5 and overall[1]["jaccard"] == 1.0
    # level 2 (about a quarter of the weights) is nearer level 5 (a half) than 3 (all): its overlap is its share
    level2 = M.load_mask(RunDir(run).level(0, 2).mask)
    assert overall[2]["other_level"] == 5
    assert overall[2]["jaccard"] == pytest.approx(M.count(level2) / M.count(mask))


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}"], "no config.json"),
        (["{run}", "--levels", "3"], "have not finished"),
        (["{run}", "--against", "{tmp}"], "no replicate_R/level_L/mask.safetensors"),
        (["{run}", "--grad-iterations", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line(run, tmp_path, capsys, args, message):
    argv = ["analyze", *(a.format(run=run, tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_criteria_comparison_directory_names_its_runs_in_one_line(run, tmp_path, capsys):
    """`ticketlab criteria` prints its comparison directory, which holds only criteria.csv; given to --against it
    must say which run directories beside it hold the criteria's masks."""
    comparison = tmp_path / "out" / "criteria-mlp-synthetic-0123456789"
    comparison.mkdir(parents=True)
    (comparison / "criteria.csv").write_text("criterion\n")
    shutil.copytree(run, tmp_path / "out" / "mlp-synthetic-abc")
    assert main(["analyze", str(run), "--against", str(comparison)]) == 2
    err = capsys.readouterr().err.strip()
    assert "criteria comparison" in err and str(tmp_path / "out" / "mlp-synthetic-abc") in err
    assert len(err.splitlines()) == 1


def test_a_level_named_twice_is_measured_once(run, tmp_path):
    """--levels 2,1,2: one row per (replicate, level), so the means and their n are over replicates only."""
    copy = shutil.copytree(run, tmp_path / "run")
    rows, _ = AN.analyze(copy, levels=[2, 1, 2], device="cpu")
    assert [(r["replicate"], r["level"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
