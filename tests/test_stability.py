"""ticketlab stability: two copies per (replicate, level, k), the path between them, resumable and repeatable."""

from __future__ import annotations

import shutil

import pytest
from conftest import tiny_config

from ticketlab import jobs as J
from ticketlab.branches.stability import level_barriers, stability
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv, read_record

OUTPUTS = ("stability.csv", "instability.csv", "stability.png", "instability.png")


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    """A finished MLP run of 2 levels, rewinding to 10it, 60 iterations, no baselines."""
    run = tmp_path_factory.mktemp("trunk") / "run"
    cfg = tiny_config(imp={"levels": 2, "rewind": "10it", "baselines": ()})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), RunDir(run), batch_jobs="off")
    return run


def _copy(trunk, tmp_path, name="run"):
    return shutil.copytree(trunk, tmp_path / name)


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained a job that had finished")

    monkeypatch.setattr(J, "run_job", refuse)
    monkeypatch.setattr(J, "run_batch", refuse)


def test_cli_writes_the_files_and_a_rerun_trains_nothing_and_writes_the_same_bytes(trunk, tmp_path, monkeypatch):
    run = _copy(trunk, tmp_path)
    assert main(["stability", str(run), "--at", "0it,10it", "--points", "4", "--device", "cpu"]) == 0
    first = {f: (run / f).read_bytes() for f in OUTPUTS}
    rows = read_csv(run / "instability.csv")
    assert [(r["level"], r["k"]) for r in rows] == [(lv, k) for lv in "012" for k in ("0", "10")]
    assert list(rows[0]) == [
        "replicate", "level", "density", "k", "instability", "barrier", "error_a", "error_b", "acc_a", "acc_b",
    ]  # fmt: skip
    path = read_csv(run / "stability.csv")
    assert list(path[0]) == ["replicate", "level", "density", "k", "alpha", "test_error"]
    assert len(path) == 6 * 4 and {p["alpha"] for p in path} == {
        "0.0",
        "0.3333333333333333",
        "0.6666666666666666",
        "1.0",
    }
    for row in rows:  # instability is the path's max minus the mean of its ends
        errors = [float(p["test_error"]) for p in path if (p["level"], p["k"]) == (row["level"], row["k"])]
        assert float(row["instability"]) == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)
    # the copies join results.csv under their own labels; the trunk's rows are unchanged
    branches = {r["branch"] for r in read_csv(run / "results.csv")}
    assert branches == {
        "ticket", "stability[copy=a,k=0it]", "stability[copy=b,k=0it]", "stability[copy=b,k=10it]",
        "stability[copy=a,k=10it]",  # only level 0's: the dense trunk did not restart at k
    }  # fmt: skip
    _no_training(monkeypatch)
    assert main(["stability", str(run), "--at", "0it,10it", "--points", "4", "--device", "cpu"]) == 0
    assert {f: (run / f).read_bytes() for f in OUTPUTS if f.endswith(".csv")} == {
        f: b for f, b in first.items() if f.endswith(".csv")
    }


def test_copy_a_at_the_trunks_k_is_the_trunks_ticket(trunk, tmp_path):
    run = RunDir(_copy(trunk, tmp_path))
    rows = stability(run, levels=[1], points=3, device="cpu")  # k defaults to the trunk's 10it
    assert [(r["level"], r["k"]) for r in rows] == [(1, 10)]
    ticket = read_record(run.job(0, 1, "ticket").result)
    assert not run.job(0, 1, "stability_10it_a").path.exists()  # not trained again
    record = read_record(run.level(0, 1).path / "stability_10it.json")
    assert record["inputs"]["a"] == ticket["files"][run.rel(run.job(0, 1, "ticket").final)]
    assert rows[0]["acc_a"] == ticket["final_test_acc"]
    assert rows[0]["error_a"] == pytest.approx(1 - ticket["final_test_acc"])  # no BatchNorm: the same evaluation
    copy_b = read_record(run.job(0, 1, "stability_10it_b").result)
    assert copy_b["final_test_acc"] == rows[0]["acc_b"] and copy_b["inputs"]["mask"] == ticket["inputs"]["mask"]


def test_an_interrupted_run_resumes_to_the_same_bytes(trunk, tmp_path, monkeypatch):
    whole, broken = _copy(trunk, tmp_path, "whole"), _copy(trunk, tmp_path, "broken")
    stability(whole, at="0it,10it", points=3, device="cpu", batch_jobs="off")
    real, calls = J.finish, []

    def finish_once(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(J, "finish", finish_once)
    with pytest.raises(KeyboardInterrupt):
        stability(broken, at="0it,10it", points=3, device="cpu", batch_jobs="off")
    monkeypatch.setattr(J, "finish", real)
    assert not (broken / "instability.csv").exists()
    stability(broken, at="0it,10it", points=3, device="cpu", batch_jobs="off")
    for name in ("stability.csv", "instability.csv"):
        assert (broken / name).read_bytes() == (whole / name).read_bytes()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--levels", "5"], "--levels: level(s) [5]"),
        (["--levels", "x"], "--levels: cannot read"),
        (["--at", "10"], "--at: malformed step '10'"),
        (["--at", "0it,60it"], "--at: 60it is iteration 60, not before the end of training"),
        (["--at", "2ep"], "not before the end of training"),
        (["--points", "1"], "--points: 1"),
    ],
)
def test_bad_input_is_one_line(trunk, tmp_path, capsys, argv, says):
    run = _copy(trunk, tmp_path)
    assert main(["stability", str(run), *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and not (run / "instability.csv").exists()


def test_between_levels_barriers_and_accuracy_drop(trunk, tmp_path, monkeypatch):
    run = RunDir(_copy(trunk, tmp_path))
    _no_training(monkeypatch)
    assert main(["stability", str(run.path), "--between-levels", "--points", "3", "--device", "cpu"]) == 0
    rows = read_csv(run.path / "level_barriers.csv")
    assert [(r["level_from"], r["level_to"]) for r in rows] == [("0", "1"), ("1", "2")]
    dense = read_record(run.job(0, 0, "ticket").result)["final_test_acc"]
    for row in rows:
        acc = read_record(run.job(0, int(row["level_to"]), "ticket").result)["final_test_acc"]
        assert float(row["acc_drop"]) == pytest.approx(dense - acc)
        assert float(row["error_to"]) == pytest.approx(1 - acc)
    assert level_barriers(run, levels=[1, 2], points=3, device="cpu")[0]["barrier"] == float(rows[1]["barrier"])


def test_a_batchnorm_conv_net_on_images(tmp_path):
    cfg = tiny_config(
        data={"dataset": "synthetic-images"},
        model={"model": "conv_2", "widths": (), "width": 0.125, "norm": "batch"},
        train={"batch_size": 32, "steps": "8it", "eval_every": "8it"},
        imp={"levels": 1, "rewind": "2it", "baselines": ()},
    )
    run = RunDir(tmp_path / "conv")
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic-images")), run, batch_jobs="off")
    rows = stability(run, levels=[1], at="2it", points=3, bn_batches=2, device="cpu")
    assert len(rows) == 1 and 0 <= rows[0]["error_a"] <= 1 and 0 <= rows[0]["error_b"] <= 1
    assert all((run.path / f).exists() for f in OUTPUTS)


def test_an_early_bird_run_measures_its_ticket_and_refuses_level_0_in_one_line(tmp_path, capsys):
    """Level 0 of an early-bird run is the dense search stopped at emergence (no rewind state, not trained to the
    end): the default levels leave it out, and asking for it is a one-line error."""
    flags = ["--dataset", "synthetic", "--steps", "40it", "--batch-size", "32", "--replicates", "1", "--device", "cpu"]
    flags += ["--density", "0.5", "--every", "10it", "--fifo", "2", "--batch-jobs", "off"]
    assert main(["early-bird", *flags, "--out", str(tmp_path)]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.name.startswith("early-bird-")]
    assert main(["stability", str(run), "--points", "3", "--device", "cpu", "--batch-jobs", "off"]) == 0
    assert [r["level"] for r in read_csv(run / "instability.csv")] == ["1"]
    capsys.readouterr()
    assert main(["stability", str(run), "--levels", "0,1", "--points", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "level 0" in err and "early-bird" in err


def test_dense_copy_a_at_the_rewind_step_restarts_there_like_copy_b(trunk, tmp_path):
    """At k = the rewind step (10it) the dense trunk trained through k with its optimizer state; copy A must start
    at k with a fresh optimizer like copy B (only their data orders differ), so it is trained, not the trunk's."""
    run = RunDir(_copy(trunk, tmp_path))
    stability(run.path, levels=[0, 1], points=3, device="cpu", batch_jobs="off")
    copy_a = run.job(0, 0, "stability_10it_a")
    assert copy_a.final.exists()
    assert not run.job(0, 1, "stability_10it_a").final.exists()  # a pruned level's ticket restarts at k: reused
    rows = read_csv(run.path / "instability.csv")
    dense = next(r for r in rows if r["replicate"] == "0" and r["level"] == "0")
    assert float(dense["acc_a"]) == read_record(copy_a.result)["final_test_acc"]
