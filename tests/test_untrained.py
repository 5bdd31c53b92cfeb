"""supermask_eval: Zhou et al. 2019's untrained supermasks, a branch evaluated on theta_0 without training."""

import json
import shutil

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.branches import run_branch
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.flops import forward_flops, training_flops
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors, read_csv, read_record

# rewind k = 0 (theta_k = theta_0) and Zhou et al.'s best criterion, so that the branch's default is the run's own
CFG = {"imp": {"levels": 2}, "prune": {"criterion": "large_final_same_sign"}}


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    run = tmp_path_factory.mktemp("trunk")
    cfg = tiny_config(**CFG)
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), run, batch_jobs="off")
    return run


def _job(run, tag, level):
    """The directory of branch ``tag``'s job at ``level`` (named ``tag-HASH`` when it has options)."""
    return next(p for p in RunDir(run).level(0, level).path.iterdir() if p.name.split("-")[0] == tag)


def _copy(trunk, tmp_path):
    shutil.copytree(trunk, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("batch_jobs", ["off", "auto"])
def test_no_optimizer_step_and_the_final_weights_are_the_masked_theta_0(trunk, tmp_path, monkeypatch, batch_jobs):
    run = _copy(trunk, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("supermask_eval took an optimizer step")

    for cls in (torch.optim.Optimizer, torch.optim.Adam, torch.optim.SGD):
        monkeypatch.setattr(cls, "step", refuse)
    run_branch(run, "supermask_eval", batch_jobs=batch_jobs)
    init = load_tensors(RunDir(run).level(0, 0).init)
    for level in (1, 2):
        d = _job(run, "supermask_eval", level)
        final, start = load_tensors(d / "final.safetensors"), load_tensors(d / "init.safetensors")
        mask = M.load_mask(d / "mask.safetensors")
        for n, t in init.items():
            expected = t * mask[n] if n in mask else t
            assert torch.equal(final[n], expected) and torch.equal(start[n], expected), n
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [60] and "train_loss" not in rows[0]  # one evaluation, at the end
        record = read_record(d / "result.json")
        assert record["final_test_acc"] == rows[0]["test_acc"]
        assert record["batched_with"] == (2 if batch_jobs == "auto" else 1)
        data = load_dataset("synthetic")
        model = registry_problem(tiny_config(**CFG), data).init_model(0)
        evaluated = len(data.test) + len(data.val or []) + min(10_000, len(data.train))
        example = data.train.inputs(slice(0, 1))
        assert record["train_flops"] == training_flops(forward_flops(model, example, mask), 0, evaluated)


def test_the_mask_keeps_the_tickets_counts_within_the_previous_level(trunk, tmp_path):
    run = _copy(trunk, tmp_path)
    run_branch(run, "supermask_eval", options={"criterion": "movement"})
    rd = RunDir(run)
    previous = M.load_mask(rd.level(0, 0).mask)
    for level in (1, 2):
        ticket = M.load_mask(rd.level(0, level).mask)
        mask = M.load_mask(_job(run, "supermask_eval", level) / "mask.safetensors")
        assert {n: int(m.sum()) for n, m in mask.items()} == {n: int(m.sum()) for n, m in ticket.items()}
        assert M.is_subset(mask, previous)
        assert any(not torch.equal(mask[n], ticket[n]) for n in mask)  # movement is not the run's criterion
        previous = ticket


def test_with_the_runs_own_criterion_the_mask_is_the_tickets(trunk, tmp_path):
    run = _copy(trunk, tmp_path)
    run_branch(run, "supermask_eval", levels=[1, 2])  # default criterion: large_final_same_sign, the run's
    for level in (1, 2):
        ticket = M.load_mask(RunDir(run).level(0, level).mask)
        mask = M.load_mask(_job(run, "supermask_eval", level) / "mask.safetensors")
        assert all(torch.equal(mask[n], ticket[n]) for n in ticket) and mask.keys() == ticket.keys()


def test_signed_constant_weights_are_the_signs_of_theta_0_times_the_layers_std(trunk, tmp_path):
    run = _copy(trunk, tmp_path)
    run_branch(run, "supermask_eval", levels=[2], options={"weights": "signed_constant"})
    init = load_tensors(RunDir(run).level(0, 0).init)
    d = _job(run, "supermask_eval", 2)
    final, mask = load_tensors(d / "final.safetensors"), M.load_mask(d / "mask.safetensors")
    for n, t in init.items():
        if n not in mask:
            assert torch.equal(final[n], t), n  # biases as theta_0
            continue
        kept = final[n][mask[n]]
        assert torch.equal(kept.abs(), torch.full_like(kept, float(t.std())))  # one magnitude per layer
        assert torch.equal(torch.sign(kept), torch.sign(t[mask[n]]))
        assert not bool(final[n][~mask[n]].any())
    assert read_csv(run / "results.csv")[-1]["branch"] == "supermask_eval[weights=signed_constant]"


def test_a_criterion_that_scores_the_network_and_a_structured_run_are_refused(trunk, tmp_path):
    with pytest.raises(TicketlabError, match="--criterion must be one of large_final, .*not 'snip'"):
        run_branch(trunk, "supermask_eval", levels=[1], options={"criterion": "snip"})
    cfg = tiny_config(imp={"levels": 1}, prune={"units": "l1"}, train={"steps": "20it"})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path / "units", batch_jobs="off")
    with pytest.raises(TicketlabError, match="structured"):
        run_branch(tmp_path / "units", "supermask_eval")


def test_the_cli_runs_it_end_to_end(trunk, tmp_path, capsys):
    run = _copy(trunk, tmp_path)
    assert main(["branch", str(run), "supermask_eval", "--criterion", "large_final", "--levels", "1,2"]) == 0
    rows = [r for r in read_csv(run / "results.csv") if r["branch"] == "supermask_eval[criterion=large_final]"]
    assert sorted(int(r["level"]) for r in rows) == [1, 2]
    assert "supermask_eval[criterion=large_final]" in capsys.readouterr().out
