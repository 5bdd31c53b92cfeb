import csv

import pytest
import torch
from conftest import tiny_config

from ticketlab import align as A
from ticketlab import masks as M
from ticketlab.align import ALIGN_COLUMNS, align, jaccard
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("align")
    cfg = tiny_config(train={"steps": "40it", "eval_every": "40it"}, imp={"levels": 1, "replicates": 2})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), path, batch_jobs="off")
    return path


def test_align_dense_pair_before_and_after_matching_then_a_rerun_recomputes_nothing(run, monkeypatch, capsys):
    rows = [r for r in align(run, level=0, points=4, device="cpu") if r["level"] == 0 and r["points"] == 4]
    assert [r["alignment"] for r in rows] == ["none", "weight_matching"]
    plain, matched = rows
    # permuting b leaves its function alone: the same end errors, and dense masks overlap fully either way
    assert matched["error_a"] == plain["error_a"] and matched["error_b"] == pytest.approx(plain["error_b"], abs=1e-9)
    assert plain["mask_jaccard"] == matched["mask_jaccard"] == 1.0
    for r in rows:
        assert r["barrier"] >= 0 and r["max_error"] >= max(r["error_a"], r["error_b"])
    with open(RunDir(run).path / "align.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ALIGN_COLUMNS and len(table) >= 2
    # a rerun reads the record back: nothing is evaluated again, same rows
    monkeypatch.setattr(A, "path_errors", lambda *a, **k: pytest.fail("recomputed"))
    assert main(["align", str(run), "--points", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "weight_matching" in out and "align.csv" in out
    again = [r for r in align(run, level=0, points=4, device="cpu") if r["level"] == 0 and r["points"] == 4]
    assert again == rows


def test_align_a_pruned_level_moves_b_mask_with_its_units(run):
    rows = [r for r in align(run, level=1, points=2, device="cpu") if r["level"] == 1]
    plain, matched = rows
    assert 0 < plain["mask_jaccard"] < 1 and 0 < matched["mask_jaccard"] < 1
    assert matched["error_b"] == pytest.approx(plain["error_b"], abs=1e-9)


def test_jaccard_golden():
    a = {"w": torch.tensor([True, True, False, False])}
    b = {"w": torch.tensor([True, False, True, False])}
    assert jaccard(a, b) == pytest.approx(1 / 3) and jaccard(a, a) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"replicates": (0, 0)}, "two different replicates"),
        ({"replicates": (0, 2)}, "two different replicates"),
        ({"level": 3}, "level 3: the run has levels 0 ... 1"),
        ({"points": 1}, "at least 2"),
    ],
)
def test_bad_requests_are_one_line_errors(run, kwargs, message):
    with pytest.raises(TicketlabError, match=message):
        align(run, device="cpu", **kwargs)


def test_a_damaged_or_unfinished_level_names_the_command_that_repairs_it(tmp_path):
    cfg = tiny_config(train={"steps": "20it", "eval_every": "20it"}, imp={"levels": 1, "replicates": 2})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path, batch_jobs="off")
    final = RunDir(tmp_path).job(1, 1, "ticket").final
    final.write_bytes(final.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(TicketlabError, match="level 1 of replicate 1 .* `ticketlab imp`"):
        align(tmp_path, level=1, points=2, device="cpu")
    assert main(["align", str(tmp_path), "--replicates", "0;1"]) == 2


def test_repair_adds_one_row_per_pair_beside_the_plain_ones(run):
    rows = [r for r in align(run, level=0, points=3, repair=True, device="cpu") if r["points"] == 3]
    assert [r["alignment"] for r in rows] == ["none", "weight_matching", "weight_matching+repair"]
    plain, _, repaired = rows
    # at alpha = 0 REPAIR asks a's layers for a's own statistics: a's error, to the odd flipped example
    assert repaired["error_a"] == pytest.approx(plain["error_a"], abs=0.01)
    # a later plain command keeps the REPAIR row in align.csv
    assert [r["alignment"] for r in align(run, level=0, points=3, device="cpu") if r["points"] == 3] == [
        "none",
        "weight_matching",
        "weight_matching+repair",
    ]


def test_transport_trains_a_mask_carried_into_b_beside_the_plain_mask_and_b_own_ticket(run, capsys):
    assert main(["align", str(run), "--points", "2", "--transport", "1", "--device", "cpu"]) == 0
    assert "transported" in capsys.readouterr().out
    rows = A.transport(run, 1, device="cpu")
    assert [r["ticket"] for r in rows] == ["transported", "plain", "own"]
    transported, plain, own = rows
    # a permutation moves kept weights, it keeps how many: a's density either way
    assert transported["density"] == plain["density"]
    assert all(0 <= r["final_test_acc"] <= 1 for r in rows) and own["jaccard_own"] == 1.0
    job = RunDir(run).job(1, 1, "transport_from_r0")
    masks = [M.load_mask(RunDir(run).job(1, 1, f"{n}_from_r0").mask) for n in ("transport", "plain")]
    assert all(int(masks[0][k].sum()) == int(masks[1][k].sum()) for k in masks[1])
    assert any(not torch.equal(masks[0][k], masks[1][k]) for k in masks[1])
    # resumable: a second call trains nothing
    stamp = job.result.stat().st_mtime_ns
    assert A.transport(run, 1, device="cpu") == rows and job.result.stat().st_mtime_ns == stamp


def test_transport_csv_keeps_every_pair_asked_for(run):
    A.transport(run, 1, replicates=(0, 1), device="cpu")
    A.transport(run, 1, replicates=(1, 0), device="cpu")
    with open(RunDir(run).path / "transport.csv") as f:
        pairs = [(r["replicate_a"], r["replicate_b"], r["ticket"]) for r in csv.DictReader(f)]
    # both pairs, each once, a rerun of a pair replacing its own rows
    assert sorted(pairs) == sorted(
        (a, b, t) for a, b in (("0", "1"), ("1", "0")) for t in ("transported", "plain", "own")
    )
    A.transport(run, 1, replicates=(0, 1), device="cpu")
    with open(RunDir(run).path / "transport.csv") as f:
        assert len(list(csv.DictReader(f))) == 6


@pytest.mark.parametrize("level", ["0", "2"])
def test_a_bad_transport_level_is_refused_before_any_path_is_measured(tmp_path, level, capsys):
    """--transport is checked first: the paths (the slow part) are not measured for a request that fails."""
    cfg = tiny_config(train={"steps": "20it", "eval_every": "20it"}, imp={"levels": 1, "replicates": 2})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path, batch_jobs="off")
    capsys.readouterr()
    assert main(["align", str(tmp_path), "--points", "2", "--transport", level, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--transport {level}" in err and "\n" not in err and not (tmp_path / "align.csv").exists()
