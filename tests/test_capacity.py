"""``ticketlab analyze --capacity`` on a tiny IMP run: gap, kept weights, W ln W and learning distance, checked
against the run's own rows and saved files."""

import csv
import math
from collections import defaultdict

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.analysis import capacity as CAP
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors, write_record


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("imp")
    cfg = tiny_config(imp={"levels": 2, "rewind": "10it", "replicates": 2, "baselines": ("random_prune",)})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), path, batch_jobs="off")
    return path


def test_gap_is_train_minus_test_accuracy_of_the_rows_per_level_and_branch(run):
    gaps = defaultdict(list)
    for r in RunDir(run).rows():
        gaps[(r["level"], r["branch"])].append(r["train_acc"] - r["final_test_acc"])
    rows = CAP.capacity_rows(run)
    assert {(r["level"], r["branch"]) for r in rows} == set(gaps)
    for r in rows:
        g = gaps[(r["level"], r["branch"])]
        assert r["n"] == 2
        assert r["gap"] == pytest.approx(sum(g) / 2)
        assert r["gap_std"] == pytest.approx(abs(g[0] - g[1]) / math.sqrt(2))  # ddof=1 with two values


def test_kept_weights_are_the_saved_masks_count_and_w_log_w_uses_the_natural_log(run):
    rd = RunDir(run)
    jobs = {(j["replicate"], j["level"], j["branch"]): j for j in CAP.job_rows(run)}
    for r in (0, 1):
        for level in (0, 1, 2):
            mask = M.load_mask(rd.level(r, level).mask)
            kept = sum(int(m.sum()) for m in mask.values())
            assert jobs[(r, level, "ticket")]["kept"] == kept
        own = M.load_mask(rd.job(r, 2, "random_prune").mask)  # the baseline's own mask
        assert jobs[(r, 2, "random_prune")]["kept"] == sum(int(m.sum()) for m in own.values())
    # level 0 keeps every prunable weight of the 2-layer MLP on 20 features: 20*32 + 32*16 + 16*10
    assert jobs[(0, 0, "ticket")]["kept"] == 20 * 32 + 32 * 16 + 16 * 10
    assert CAP.w_log_w(1312) == pytest.approx(1312 * math.log(1312)) and CAP.w_log_w(0) == 0.0
    assert CAP.w_log_w(math.e) == pytest.approx(math.e)


def test_learning_distance_is_the_norm_of_final_minus_start_weights(run):
    rd = RunDir(run)
    jobs = {(j["replicate"], j["level"], j["branch"]): j for j in CAP.job_rows(run)}
    names = list(M.load_mask(rd.level(1, 0).mask))
    for level, branch, start in (
        (0, "ticket", rd.level(1, 0).init),  # level 0 trains from the level's theta_0
        (2, "ticket", rd.job(1, 2, "ticket").init),  # a pruned level from its rewound weights
        (1, "random_prune", rd.job(1, 1, "random_prune").init),
    ):
        final, theta0 = load_tensors(rd.job(1, level, branch).final), load_tensors(start)
        step = torch.cat([(final[n].double() - theta0[n].double()).flatten() for n in names])
        expected = float(torch.linalg.vector_norm(step))
        assert expected > 0
        assert jobs[(1, level, branch)]["distance"] == pytest.approx(expected, rel=1e-9)


def test_cli_prints_the_table_and_writes_capacity_csv(run, capsys):
    assert main(["analyze", str(run), "--capacity"]) == 0
    out = capsys.readouterr().out
    assert "Capacity" in out and "W ln W" in out and "random-pruning gap" in out and "learning distance" in out
    with open(run / "capacity.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == CAP.COLUMNS
    assert [(r["level"], r["branch"]) for r in table] == [
        ("0", "ticket"), ("1", "ticket"), ("1", "random_prune"), ("2", "ticket"), ("2", "random_prune"),
    ]  # fmt: skip
    # pruning 50% of the hidden layers and 25% of the output a level: W falls level to level
    kept = [float(r["kept"]) for r in table if r["branch"] == "ticket"]
    assert kept[0] > kept[1] > kept[2] > 0
    assert "Capacity" in (run / "report.html").read_text()  # the report's panel


@pytest.mark.parametrize("kind", [None, "supermask"])
def test_a_directory_that_is_not_an_imp_run_is_one_line_exit_2(tmp_path, capsys, kind):
    if kind:
        write_record(tmp_path / "config.json", {"config": tiny_config().to_dict(), kind: {}})
    assert main(["analyze", str(tmp_path), "--capacity"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("not an IMP run" in err if kind else "no config.json" in err)


def test_a_branch_with_options_is_measured_from_its_own_job_directory(run, capsys):
    # `branch rewind --to 5it` labels its rows rewind[to=5it] but keeps its jobs in rewind-<digest>/
    assert main(["branch", str(run), "rewind", "--to", "5it", "--levels", "1", "--no-progress"]) == 0
    capsys.readouterr()
    rows = [r for r in CAP.job_rows(run) if r["branch"] == "rewind[to=5it]"]
    assert len(rows) == 2 and all(r["distance"] is not None and r["distance"] > 0 for r in rows)
