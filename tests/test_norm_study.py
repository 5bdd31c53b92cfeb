"""`ticketlab norms`: one ordinary IMP run per (norm, batch size), the same config and seeds otherwise, and a table of
tickets against baselines per norm, batch size and level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ticketlab import config as C
from ticketlab import sweep as SW
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.norm_study import norm_specs, norm_study, parse_batch_sizes, parse_norms
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv

# LeNet-5 at quarter width on 3x32x32 synthetic images, classes 0 and 1 only (134 training examples, 44 test: a
# fifth of the set, to keep the module's setup short), one epoch per level: 2 iterations at batch 67, 1 at batch 134;
# one pruned level, two replicates.
BASE = C.from_dict(
    {
        "data": {"dataset": "synthetic-images", "classes": (0, 1)},
        "model": {"model": "lenet5", "width": 0.25},
        "train": {"optimizer": "adam", "lr": 1e-2, "batch_size": 50, "steps": "1ep", "eval_every": "1ep"},
        "prune": {"strategy": "layerwise", "fraction": 0.5},
        "imp": {"levels": 1, "replicates": 2},
    }
)
NORMS, SIZES = ["batch", "none"], [67, 134]


def _result_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/replicate_*/level_*/*/result.json")}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("norms")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(SW, "summary_html", lambda *a: None)  # the sweep's HTML page (each run's report): seconds, not tested
        path, rows = norm_study(BASE, NORMS, SIZES, out=out, device="cpu")
    return out, path, rows


def test_one_run_per_norm_and_batch_size_with_those_values_and_nothing_else_changed(study):
    out, _, _ = study
    specs = norm_specs(BASE, NORMS, SIZES)
    assert [(s.config.model.norm, s.config.train.batch_size) for s in specs] == [
        ("batch", 67),
        ("batch", 134),
        ("none", 67),
        ("none", 134),
    ]
    for s in specs:
        saved = RunDir(out / s.run_name).config()
        assert (saved.model.norm, saved.train.batch_size) == (s.config.model.norm, s.config.train.batch_size)
        # everything but the two studied fields is the base config (same seed, same training length)
        assert s.config.replace(model={"norm": ""}, train={"batch_size": 50}) == BASE
    assert len({s.run_name for s in specs}) == 4


def test_table_has_one_row_per_norm_batch_and_level_with_n_replicates(study):
    out, path, rows = study
    assert path == out / "norms.csv"
    assert [(r["norm"], r["batch_size"], r["level"]) for r in rows] == [
        (n, b, level) for n in NORMS for b in SIZES for level in (0, 1)
    ]
    for r in rows:
        assert r["ticket_n"] == 2 and 0 <= r["ticket_mean"] <= 1 and r["ticket_std"] >= 0
        if r["level"] == 0:  # the dense network: no baselines, no margin
            assert r["density"] == 1.0 and r["reinit_n"] == r["random_prune_n"] == 0 and r["margin"] == ""
        else:
            assert r["reinit_n"] == r["random_prune_n"] == 2 and 0.45 < r["density"] < 0.55
            best = max(r["reinit_mean"], r["random_prune_mean"])
            assert r["margin"] == pytest.approx(r["ticket_mean"] - best)
    saved = read_csv(path)
    assert len(saved) == 8 and saved[0]["norm"] == "batch" and saved[0]["batch_size"] == "67"


def test_steps_in_epochs_give_fewer_iterations_to_larger_batches(study):
    out, _, _ = study
    steps = {}
    for s in norm_specs(BASE, NORMS, SIZES)[:2]:
        lines = (out / s.run_name / "replicate_0" / "level_0" / "ticket" / "metrics.jsonl").read_text().splitlines()
        steps[s.config.train.batch_size] = max(json.loads(x)["step"] for x in lines)
    assert steps == {67: 2, 134: 1}  # 134 examples: one epoch each


def test_a_second_call_trains_nothing(study, monkeypatch, capsys):
    out, path, rows = study
    before = _result_files(out)
    assert len(before) == 4 * 2 * 4  # per run and replicate: dense ticket; level 1's ticket and two baselines
    monkeypatch.setattr(SW, "run_one", lambda *a: pytest.fail("a finished run was run again"))
    monkeypatch.setattr(SW, "summary_html", lambda *a: None)
    args = ["norms", "--dataset", "synthetic-images", "--classes", "0,1", "--model", "lenet5", "--width", "0.25"]
    args += ["--optimizer", "adam"]
    args += ["--lr", "0.01", "--steps", "1ep", "--eval-every", "1ep", "--strategy", "layerwise", "--fraction", "0.5"]
    args += ["--levels", "1", "--replicates", "2", "--norms", "batch,none", "--batch-sizes", "67,134"]
    assert main([*args, "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"norm study: {path}" in printed and "same epochs at every batch size" in printed
    assert _result_files(out) == before and read_csv(path) == read_csv(path)


def test_a_model_without_a_norm_argument_is_one_line_before_anything_runs(tmp_path, capsys):
    mlp = BASE.replace(data={"dataset": "synthetic"}, model={"model": "mlp", "width": 1.0})
    with pytest.raises(TicketlabError, match="model 'mlp' takes no norm argument") as e:
        norm_study(mlp, NORMS, SIZES, out=tmp_path / "runs")
    assert "\n" not in str(e.value) and not (tmp_path / "runs").exists()
    assert main(["norms", "--dataset", "synthetic", "--model", "mlp", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes no norm argument" in err and "--model" in err


@pytest.mark.parametrize("text", ["", "batch,batch", "batch,weight"])
def test_bad_norms_are_refused(text):
    with pytest.raises(TicketlabError, match="--norms"):
        parse_norms(text)


@pytest.mark.parametrize("text", ["", "16,16", "0", "16,big"])
def test_bad_batch_sizes_are_refused(text):
    with pytest.raises(TicketlabError, match="--batch-sizes"):
        parse_batch_sizes(text)
