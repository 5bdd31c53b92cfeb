"""--tensorboard: every job's curves, readable by TensorBoard, equal to what the run directory records."""

import json
import shutil

import pytest
from conftest import tiny_config

from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.store import read_record

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard package is not installed"
)


def _scalars(where):
    acc = event_accumulator.EventAccumulator(str(where))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_each_job_writes_the_scalars_its_metrics_record(tmp_path):
    cfg = tiny_config(imp={"levels": 1})
    problem = registry_problem(cfg, load_dataset("synthetic"))
    run = run_imp(cfg, problem, tmp_path / "run", quiet=True, tensorboard=tmp_path / "tb")
    for branch in ("ticket", "reinit", "random_prune"):
        where = tmp_path / "tb" / run.path.name / "replicate_0" / "level_01" / branch
        scalars = _scalars(where)
        metrics = [json.loads(line) for line in run.job(0, 1, branch).metrics.read_text().splitlines()]
        assert [s for s, _ in scalars["test_acc"]] == [m["step"] for m in metrics]
        assert [v for _, v in scalars["test_acc"]] == pytest.approx([m["test_acc"] for m in metrics])
        assert [v for _, v in scalars["train_loss"]] == pytest.approx([m["train_loss"] for m in metrics[1:]])
        record = read_record(run.job(0, 1, branch).result)
        assert scalars["density"][0][1] == pytest.approx(record["density"])
        assert scalars["final_test_acc"][0][1] == pytest.approx(record["final_test_acc"])
    assert (tmp_path / "tb" / run.path.name / "replicate_0" / "level_00" / "ticket").is_dir()


def test_a_job_trained_again_replaces_its_curves_and_a_finished_run_writes_none(tmp_path):
    cfg = tiny_config(imp={"levels": 1})
    problem = registry_problem(cfg, load_dataset("synthetic"))
    board = tmp_path / "tb"
    run = run_imp(cfg, problem, tmp_path / "run", quiet=True, tensorboard=board)
    where = board / run.path.name / "replicate_0" / "level_01" / "reinit"
    shutil.rmtree(run.job(0, 1, "reinit").path)  # as if killed before it finished
    before = sorted(p.name for p in where.iterdir())
    run_imp(cfg, problem, tmp_path / "run", quiet=True, tensorboard=board)
    after = sorted(p.name for p in where.iterdir())
    assert len(after) == 1 and after != before  # one new event file, the old one gone
    assert [step for step, _ in _scalars(where)["test_acc"]] == [0, 20, 40, 60]  # each step once, not twice
    ticket = board / run.path.name / "replicate_0" / "level_01" / "ticket"
    untouched = {p: p.stat().st_mtime_ns for p in ticket.iterdir()}
    run_imp(cfg, problem, tmp_path / "run", quiet=True, tensorboard=board)
    assert {p: p.stat().st_mtime_ns for p in ticket.iterdir()} == untouched


def test_without_the_package_the_flag_is_one_clear_line(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = tiny_config()
    with pytest.raises(TicketlabError, match=r"pip install 'ticketlab\[tensorboard\]'"):
        run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path, tensorboard=tmp_path / "tb")
    assert not (tmp_path / "config.json").exists()
