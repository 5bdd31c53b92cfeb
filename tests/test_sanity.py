"""Sanity checks of pruning at init (shuffle, invert, reinit) and `ticketlab sanity`."""

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.branches import run_branch
from ticketlab.branches.sanity import at_init_mask, shuffled
from ticketlab.cli import main
from ticketlab.data import batches, load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.plan import make_plan
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.store import load_tensors, read_csv


def _run(tmp_path_factory, name, **imp):
    run = tmp_path_factory.mktemp(name)
    train = {"steps": "30it", "eval_every": "10it"}
    cfg = tiny_config(
        train=train, imp={"levels": 2, "baselines": (), **imp}, prune={"criterion": "snip"} if imp else {}
    )
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), run, batch_jobs="off", quiet=True)
    return run, cfg


@pytest.fixture(scope="module")
def at_init(tmp_path_factory):
    return _run(tmp_path_factory, "at_init", mode="at-init")


def test_shuffle_keeps_each_layer_count_changes_the_mask_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    mask = {"a": torch.rand(8, 6, generator=g) < 0.3, "b": torch.rand(5, generator=g) < 0.5}
    out = shuffled(mask, 7)
    assert {n: int(m.sum()) for n, m in out.items()} == {n: int(m.sum()) for n, m in mask.items()}
    assert all(out[n].shape == mask[n].shape for n in mask)
    assert not torch.equal(out["a"], mask["a"])
    assert all(torch.equal(out[n], shuffled(mask, 7)[n]) for n in mask)  # same seed, same mask
    assert not torch.equal(out["a"], shuffled(mask, 8)["a"])


def _snip_scores(cfg, run, level):
    """SNIP's |g * w| at the rewind point, computed here from scratch on the trunk's scoring batch."""
    data = load_dataset("synthetic")
    model = registry_problem(cfg, data).init_model(0)
    model.load_state_dict(load_tensors(RunDir(run).level(0, 0).rewind))
    seed = derive_seed(cfg.imp.seed, 0, level)
    for _, x, y in batches(data.train, cfg.train.batch_size, seed, 0, cfg.prune.score_batches):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return {n: (p.grad * p).abs().detach() for n, p in model.named_parameters() if p.grad is not None}


def test_invert_keeps_the_tickets_counts_and_the_lowest_scored_weights(at_init):
    run, cfg = at_init
    run_branch(run, "invert", levels=[2], batch_jobs="off")
    ticket = M.load_mask(RunDir(run).level(0, 2).mask)
    inverted = M.load_mask(RunDir(run).job(0, 2, "invert").mask)
    scores = _snip_scores(cfg, run, 2)
    for n in ticket:
        assert int(inverted[n].sum()) == int(ticket[n].sum())  # layerwise: the same count in each layer
        if bool(ticket[n].all()):
            continue
        s = scores[n]
        assert s[inverted[n]].max() <= s[~inverted[n]].min() + 1e-7  # the lowest scores kept
        assert s[ticket[n]].min() >= s[~ticket[n]].max() - 1e-7  # (the trunk kept the highest)
    problem = registry_problem(cfg, load_dataset("synthetic"))  # not negated: the trunk's own mask, bit for bit
    again = at_init_mask(
        cfg, problem, make_plan(cfg, problem), 0, 2, load_tensors(RunDir(run).level(0, 0).rewind), invert=False
    )
    assert all(torch.equal(again[n], ticket[n]) for n in ticket)
    start = load_tensors(RunDir(run).job(0, 2, "invert").init)
    rewind = load_tensors(RunDir(run).level(0, 0).rewind)
    assert all(torch.equal(start[n], rewind[n] * inverted[n]) for n in inverted)  # on theta_k


def test_sanity_command_writes_sanity_csv_and_a_second_call_trains_nothing(at_init, capsys):
    run, _ = at_init
    assert main(["sanity", str(run), "--levels", "1,2", "--batch-jobs", "off"]) == 0
    rows = read_csv(run / "sanity.csv")
    assert [(r["level"], r["check"]) for r in rows] == [
        (str(lv), c) for lv in (1, 2) for c in ("shuffle", "reinit", "invert")
    ]
    for r in rows:
        assert r["ticket_n"] == r["check_n"] == "1" and r["ticket_std"] == r["check_std"] == ""
        assert float(r["drop"]) == pytest.approx(float(r["check_acc"]) - float(r["ticket_acc"]))
    assert float(rows[0]["density"]) == pytest.approx(M.density(M.load_mask(RunDir(run).level(0, 1).mask)))
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("result.json")}
    assert main(["sanity", str(run), "--levels", "1,2", "--batch-jobs", "off"]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("result.json")} == stamps
    assert "invert" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["sanity", str(run), "--levels", "2,2", "--checks", "shuffle"]) == 0  # a level given twice: one row
    printed = [line for line in capsys.readouterr().out.splitlines() if "shuffle" in line or "reinit" in line]
    assert len(printed) == 1 and printed[0].split()[0] == "2"
    # sanity.csv keeps what earlier calls trained (levels 1 and 2, every check), not only this call's row
    assert [(r["level"], r["check"]) for r in read_csv(run / "sanity.csv")] == [
        (str(lv), c) for lv in (1, 2) for c in ("shuffle", "reinit", "invert")
    ]


def test_invert_on_an_imp_run_is_refused_in_one_line(tmp_path_factory, capsys):
    run, _ = _run(tmp_path_factory, "iterative")
    with pytest.raises(TicketlabError, match="not a pruning-at-init check"):
        run_branch(run, "invert", levels=[1])
    capsys.readouterr()  # the trunk's progress
    assert main(["sanity", str(run), "--checks", "invert"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a pruning-at-init check" in err and "\n" not in err
    assert not (run / "sanity.csv").exists()


def test_a_run_without_a_finished_pruned_level_is_one_line_naming_that(tmp_path, capsys):
    cfg = tiny_config(imp={"levels": 2, "baselines": ()})
    run = RunDir(tmp_path / "fresh")
    with run.lock():
        run.claim(cfg, registry_problem(cfg, load_dataset("synthetic")).identity)
    assert main(["sanity", str(run.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no finished pruned level" in err and "\n" not in err
    assert not (run.path / "sanity.csv").exists()
