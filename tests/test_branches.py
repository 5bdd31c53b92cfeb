"""Branches off a finished IMP run: each branch's defining property, checked on the weights it starts from."""

import re
import shutil
from typing import Annotated

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.branches import BRANCHES, BranchStart, dense_at, register, run_branch
from ticketlab.cli import main
from ticketlab.data import load_configured, load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors, read_csv, read_json, read_record

# SGD with a step schedule, so that fine-tuning (final LR) and LR rewinding (the schedule from k) differ
TRAIN = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "step", "milestones": ("40it",), "gamma": 0.1}


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    run = tmp_path_factory.mktemp("trunk")
    cfg = tiny_config(train=TRAIN, imp={"levels": 2, "rewind": "10it", "baselines": ("reinit",)})
    # one job at a time: replaying a job alone (a branch of one level) then reproduces it bit for bit; batched
    # jobs equal it to float tolerance (test_branch_levels_train_batched_like_one_by_one)
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), run, batch_jobs="off")
    return run


def _start(run, branch, level=1):
    return load_tensors(RunDir(run).job(0, level, branch).init)


def _level(run, level=1):
    d = RunDir(run).level(0, level).path
    mask = M.load_mask(d / "mask.safetensors")
    rewind = load_tensors(RunDir(run).level(0, 0).rewind)
    trained = load_tensors(RunDir(run).job(0, level - 1, "ticket").final)
    return mask, rewind, trained


def _metrics_lr(run, branch, level=1):
    import json

    lines = RunDir(run).job(0, level, branch).metrics.read_text().splitlines()
    return [json.loads(x)["lr"] for x in lines]


def test_finetune_starts_from_the_trained_weights_at_the_final_lr(trunk):
    run_branch(trunk, "finetune", levels=[1])
    mask, _, trained = _level(trunk)
    start = _start(trunk, "finetune")
    assert all(torch.equal(start[n], trained[n] * mask[n]) for n in mask)
    assert torch.equal(start["fc.0.bias"], trained["fc.0.bias"])  # unpruned tensors as trained
    assert all(lr == pytest.approx(0.005) for lr in _metrics_lr(trunk, "finetune"))  # 0.05 x 0.1: the final LR


def test_lr_rewind_keeps_the_trained_weights_but_replays_the_schedule_from_k(trunk):
    run_branch(trunk, "lr_rewind", levels=[1])
    run_branch(trunk, "finetune", levels=[1])  # (no work when the finetune test ran first)
    assert all(
        torch.equal(a, b) for a, b in zip(_start(trunk, "lr_rewind").values(), _start(trunk, "finetune").values())
    )
    lrs = _metrics_lr(trunk, "lr_rewind")  # evaluations at 10 (k), 20, 40, 60 it
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.005)
    rows = read_csv(trunk / "results.csv")
    ft = next(r for r in rows if r["branch"] == "finetune")
    lr = next(r for r in rows if r["branch"] == "lr_rewind")
    assert ft["final_test_acc"] != lr["final_test_acc"] or ft["train_acc"] != lr["train_acc"]


def test_partial_rewind_touches_only_the_chosen_layers(trunk):
    run_branch(trunk, "partial_rewind", levels=[1], options={"layers": "fc.0"})
    mask, rewind, trained = _level(trunk)
    start = load_tensors(next((trunk / "replicate_0" / "level_1").glob("partial_rewind-*")) / "init.safetensors")
    for name, t in start.items():
        source = rewind if name.startswith("fc.0.") else trained
        expected = source[name] * mask[name] if name in mask else source[name]
        assert torch.equal(t, expected), name


def test_sign_only_keeps_every_sign_with_one_magnitude_per_layer(trunk):
    run_branch(trunk, "sign_only", levels=[1])
    mask, rewind, _ = _level(trunk)
    start = _start(trunk, "sign_only")
    init = load_tensors(RunDir(trunk).level(0, 0).init)
    for n, m in mask.items():
        assert torch.equal(torch.sign(start[n][m]), torch.sign(rewind[n][m]))
        assert torch.allclose(start[n][m].abs(), init[n].std().expand(int(m.sum())))
        assert not start[n][~m].any()


@pytest.mark.parametrize("how", ["global", "layer", "filter", "sign"])
def test_shuffles_keep_each_groups_multiset_of_values(trunk, how):
    run_branch(trunk, "perturb", levels=[1], options={"shuffle": how})
    mask, rewind, _ = _level(trunk)
    job = next(
        p
        for p in (trunk / "replicate_0" / "level_1").glob("perturb-*")
        if f"shuffle={how}" in read_json(p / "result.json")["branch"]
    )
    start = load_tensors(job / "init.safetensors")

    def groups(state):
        out = []
        for n, m in mask.items():
            w = state[n]
            if how == "filter":
                out += [sorted(w[r][m[r]].tolist()) for r in range(w.shape[0])]
            elif how == "sign":
                out += [sorted(w[m & (w > 0)].tolist()), sorted(w[m & (w <= 0)].tolist())]
            else:
                out.append(sorted(w[m].tolist()))
        return out if how != "global" else [sorted(v for g in out for v in g)]

    assert groups(start) == groups(rewind)
    assert any(not torch.equal(start[n], rewind[n] * mask[n]) for n in mask)  # something moved
    assert all(not start[n][~m].any() for n, m in mask.items())


def test_noise_has_the_requested_scale_and_flips_the_requested_count(trunk):
    run_branch(trunk, "perturb", levels=[1], options={"noise": 0.5})
    run_branch(trunk, "perturb", levels=[1], options={"flip": 0.25})
    mask, rewind, _ = _level(trunk)
    init = load_tensors(RunDir(trunk).level(0, 0).init)
    jobs = {read_json(p / "result.json")["branch"]: p for p in (trunk / "replicate_0" / "level_1").glob("perturb-*")}
    noisy = load_tensors(jobs["perturb[noise=0.5]"] / "init.safetensors")
    m = mask["fc.0.weight"]
    ratio = float((noisy["fc.0.weight"] - rewind["fc.0.weight"])[m].std() / init["fc.0.weight"].std())
    assert 0.45 < ratio < 0.55  # 320 draws: the std of the estimate is about 0.02
    flipped = load_tensors(jobs["perturb[flip=0.25]"] / "init.safetensors")
    for n, m in mask.items():
        assert torch.equal(flipped[n].abs(), (rewind[n] * m).abs())
        assert int((torch.sign(flipped[n]) != torch.sign(rewind[n]))[m].sum()) == round(0.25 * int(m.sum()))


def test_rows_land_in_results_and_a_second_identical_command_does_no_work(trunk, capsys):
    run_branch(trunk, "finetune")  # levels 1 (done above) and 2
    job = RunDir(trunk).job(0, 2, "finetune").result
    stamp = job.stat().st_mtime_ns
    capsys.readouterr()
    rows = run_branch(trunk, "finetune")
    assert job.stat().st_mtime_ns == stamp and "test acc" not in capsys.readouterr().err
    assert sorted(r["level"] for r in rows if r["branch"] == "finetune") == [1, 2]
    assert {"ticket", "reinit", "finetune"} <= {r["branch"] for r in read_csv(trunk / "results.csv")}
    # the re-init baseline asked for after the fact is the trunk's own job: nothing runs
    stamp = RunDir(trunk).job(0, 1, "reinit").result.stat().st_mtime_ns
    run_branch(trunk, "reinit")
    assert RunDir(trunk).job(0, 1, "reinit").result.stat().st_mtime_ns == stamp


def test_random_prune_after_the_fact_matches_the_tickets_counts(trunk):
    rows = run_branch(trunk, "random_prune", levels=[2], options={"strategy": "global"})
    mask, _, _ = _level(trunk, 2)
    job = next((trunk / "replicate_0" / "level_2").glob("random_prune-*"))
    rand = M.load_mask(job / "mask.safetensors")
    assert M.count(rand) == M.count(mask) and any(int(rand[n].sum()) != int(mask[n].sum()) for n in mask)
    assert any(r["branch"] == "random_prune[strategy=global]" for r in rows)


@pytest.mark.parametrize(
    "name, levels, options, message",
    [
        ("rewinding", None, {}, "unknown branch"),
        ("finetune", None, {"noise": 1}, "takes no option"),
        ("perturb", None, {"noise": "x"}, "cannot read"),
        ("perturb", None, {}, "needs --noise"),
        ("partial_rewind", None, {}, "needs --layers"),
        ("partial_rewind", None, {"layers": "fc.9"}, "name no tensor"),
        ("finetune", [7], {}, "have not finished"),
        ("transfer", None, {}, "transfer needs"),
        ("transfer", None, {"classes": "3,12"}, "classes must be distinct labels"),
        ("transfer", None, {"dataset": "mnist1d"}, "pick a dataset of the same shape"),
    ],
)
def test_bad_branch_requests_are_user_errors(trunk, name, levels, options, message):
    with pytest.raises(TicketlabError, match=message):
        run_branch(trunk, name, levels=levels, options=options)


def test_transfer_changes_only_the_output_layer(trunk):
    rows = run_branch(trunk, "transfer", levels=[1], options={"classes": "5,6,7,8,9"})
    mask, rewind, _ = _level(trunk)
    job = next(p for p in (trunk / "replicate_0" / "level_1").glob("transfer-*"))
    start, tmask = load_tensors(job / "init.safetensors"), M.load_mask(job / "mask.safetensors")
    for name, t in start.items():
        if name.startswith("fc.2."):  # the output layer: 5 classes now, newly initialised, at the ticket's density
            assert t.shape[0] == 5
            continue
        assert torch.equal(t, rewind[name] * mask[name] if name in mask else rewind[name]), name
    assert tmask["fc.2.weight"].shape == (5, 16)
    assert abs(M.density({"w": tmask["fc.2.weight"]}) - M.density({"w": mask["fc.2.weight"]})) < 1 / 80
    row = next(r for r in rows if r["branch"] == "transfer[classes=5,6,7,8,9]")
    assert row["final_test_acc"] > 0.4  # 5 classes: chance is 0.2
    # another optimizer on the same task keeps the output layer: the ticket's own start, bit for bit
    run_branch(trunk, "transfer", levels=[1], options={"optimizer": "adam", "lr": 0.01})
    job = next(
        p
        for p in (trunk / "replicate_0" / "level_1").glob("transfer-*")
        if "adam" in read_json(p / "result.json")["branch"]
    )
    ticket = load_tensors(RunDir(trunk).job(0, 1, "ticket").init)
    assert all(torch.equal(t, ticket[n]) for n, t in load_tensors(job / "init.safetensors").items())


def test_branch_levels_train_batched_like_one_by_one(trunk, tmp_path):
    shutil.copytree(trunk, tmp_path / "off")
    rows = run_branch(trunk, "rewind", levels=[1, 2], options={"to": "20it"}, batch_jobs="auto")
    alone = run_branch(tmp_path / "off", "rewind", levels=[1, 2], options={"to": "20it"}, batch_jobs="off")
    picked = [[r for r in rs if r["branch"].startswith("rewind[to=20it")] for rs in (rows, alone)]
    assert [r["level"] for r in picked[0]] == [r["level"] for r in picked[1]] == [1, 2]
    for a, b in zip(*picked):
        assert abs(float(a["final_test_acc"]) - float(b["final_test_acc"])) <= 0.01
    records = [read_json(p / "result.json") for p in trunk.glob("replicate_0/level_*/rewind-*")]
    assert sorted(r["batched_with"] for r in records if "20it" in r["branch"]) == [2, 2]


def test_rewind_to_another_step_replays_the_dense_training_bit_for_bit(trunk):
    # to the trunk's own k: theta_k reproduced exactly, so the branch is the ticket itself
    run_branch(trunk, "rewind", levels=[1], options={"to": "10it"})
    level0 = RunDir(trunk).level(0, 0).path
    replayed, saved = load_tensors(level0 / "dense_10it.safetensors"), load_tensors(level0 / "rewind.safetensors")
    assert all(torch.equal(replayed[n], saved[n]) for n in saved)
    job = next(
        p
        for p in (trunk / "replicate_0" / "level_1").glob("rewind-*")
        if "10it" in read_json(p / "result.json")["branch"]
    )
    ticket = RunDir(trunk).job(0, 1, "ticket")
    assert read_json(job / "result.json")["final_test_acc"] == read_record(ticket.result)["final_test_acc"]
    assert (job / "metrics.jsonl").read_text() == ticket.metrics.read_text()
    # to 30it: the dense weights of step 30, masked, trained from step 30 on (30 iterations left of 60)
    run_branch(trunk, "rewind", levels=[1], options={"to": "30it"})
    mask, _, _ = _level(trunk)
    later = load_tensors(level0 / "dense_30it.safetensors")
    job = next(
        p
        for p in (trunk / "replicate_0" / "level_1").glob("rewind-*")
        if "30it" in read_json(p / "result.json")["branch"]
    )
    start = load_tensors(job / "init.safetensors")
    assert all(torch.equal(start[n], later[n] * mask[n]) for n in mask)
    assert not torch.equal(later["fc.0.weight"], saved["fc.0.weight"])
    assert (job / "metrics.jsonl").read_text().startswith('{"step": 30')


def test_random_prune_after_the_fact_is_the_trunks_own_baseline(tmp_path):
    data = load_dataset("synthetic")
    prune = {"strategy": "global", "keep_dense": ("last",)}  # pools: fc.0 + fc.1 under one threshold, fc.2 alone
    with_baseline = tiny_config(prune=prune, imp={"levels": 1, "baselines": ("random_prune",)})
    run_imp(with_baseline, registry_problem(with_baseline, data), tmp_path / "a")
    without = tiny_config(prune=prune, imp={"levels": 1, "baselines": ()})
    run_imp(without, registry_problem(without, data), tmp_path / "b")
    run_branch(tmp_path / "b", "random_prune")
    a, b = (M.load_mask(RunDir(tmp_path / d).job(0, 1, "random_prune").mask) for d in "ab")
    assert all(torch.equal(a[n], b[n]) for n in a) and bool(b["fc.2.weight"].all())


def test_options_written_differently_are_one_request():
    from ticketlab.branches import label, parse_options

    a, b = parse_options("transfer", {"classes": "5, 6,7"}), parse_options("transfer", {"classes": "5,6,7"})
    assert a == b and label("transfer", a) == "transfer[classes=5,6,7]"
    assert parse_options("perturb", {"noise": "0.5"})["noise"] == 0.5


def test_a_damaged_dense_replay_is_replayed_again_with_one_warning(trunk, capsys):
    run = RunDir(trunk)
    cfg = run.config()
    problem = registry_problem(cfg, load_configured(cfg.data))
    first = dense_at(run, cfg, problem, 0, 20)
    path = run.level(0, 0).dense_at(20)
    blob = bytearray(path.read_bytes())
    blob[-64:] = bytes(64)  # the last 64 bytes of tensor data zeroed: still a readable safetensors file
    path.write_bytes(bytes(blob))
    capsys.readouterr()
    again = dense_at(run, cfg, problem, 0, 20)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "dense_20it.safetensors is damaged" in warnings[0]
    assert all(torch.equal(again[n], first[n]) for n in first)  # the replay, bit for bit
    dense_at(run, cfg, problem, 0, 20)
    assert "warning" not in capsys.readouterr().err  # the cache written again is trusted


def test_branch_help_lists_every_branch_and_option_from_the_registry(capsys):
    @register
    def probe(s, fresh, *, depth: Annotated[int, "how deep the probe goes"] = 3) -> BranchStart:
        """A branch registered by this test alone."""

    try:
        with pytest.raises(SystemExit):
            main(["branch", "--help"])
    finally:
        BRANCHES.pop("probe")
    text = re.sub(r"\s+", "", capsys.readouterr().out)  # argparse wraps lines (and at hyphens)
    assert "probe[--depthDEPTH]:Abranchregisteredbythistestalone." in text
    assert "--depthDEPTHprobe:howdeeptheprobegoes(default:3)" in text
    assert "probe" not in BRANCHES and {"reinit", "perturb", "transfer"} <= set(BRANCHES)
    for branch in BRANCHES.values():
        assert re.sub(r"\s+", "", f"{branch.name}") in text and re.sub(r"\s+", "", branch.summary) in text
        for option in branch.options.values():
            assert re.sub(r"\s+", "", f"--{option.name.replace('_', '-')}") in text
            assert re.sub(r"\s+", "", f"{branch.name}: {option.help}") in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["perturb", "--noise", "abc"], "branch perturb: cannot read noise='abc' as float"),
        (["random_prune", "--strategy", "pools"], "random_prune: strategy must be one of trunk, layerwise, global"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_in_one_line(tmp_path, capsys, args, message):
    # tmp_path is no run directory: the option is refused before anything is read
    assert main(["branch", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "config.json" not in err


def test_a_branch_on_a_damaged_trunk_says_which_command_repairs_it_and_records_the_mask_it_used(trunk, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trunk, run)
    run_branch(run, "finetune", levels=[1], device="cpu")
    record = read_record(RunDir(run).job(0, 1, "finetune").result)
    assert record["inputs"]["mask"] == read_record(RunDir(run).level(0, 1).record)["mask"]
    mask = RunDir(run).level(0, 2).mask
    M.save_mask(mask, {n: torch.ones_like(m) for n, m in M.load_mask(mask).items()})
    with pytest.raises(TicketlabError, match=r"mask.safetensors is damaged .*run the `ticketlab imp` command"):
        run_branch(run, "lr_rewind", levels=[2], device="cpu")


def test_a_branch_never_trains_from_a_damaged_trunk_checkpoint_and_the_trunk_repairs_it(trunk, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trunk, run)
    final = RunDir(run).job(0, 1, "ticket").final  # what lr_rewind at level 2 starts from
    blob = bytearray(final.read_bytes())
    blob[-5] ^= 0xFF
    final.write_bytes(bytes(blob))
    with pytest.raises(TicketlabError, match=r"run the `ticketlab imp` command .* again to repair"):
        run_branch(run, "lr_rewind", levels=[2], device="cpu")
    cfg = RunDir(run).config()
    # the trunk's command (with its --batch-jobs) repairs it
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), run, batch_jobs="off")
    capsys.readouterr()
    run_branch(run, "lr_rewind", levels=[2], device="cpu")
    clean = tmp_path / "clean"
    shutil.copytree(trunk, clean)
    run_branch(clean, "lr_rewind", levels=[2], device="cpu")
    job = RunDir(run).job(0, 2, "lr_rewind")
    assert job.final.read_bytes() == RunDir(clean).job(0, 2, "lr_rewind").final.read_bytes()
    assert (
        read_record(job.result)["inputs"]["trained"]
        == read_record(RunDir(run).job(0, 1, "ticket").result)["files"]["replicate_0/level_1/ticket/final.safetensors"]
    )
    # a damaged branch job: the trunk's command leaves it out and says so; the branch command computes it again
    job.final.write_bytes(b"")
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), run)
    err = capsys.readouterr().err
    assert "lr_rewind: left out; the command that made it computes it again" in err
    assert ("2", "lr_rewind") not in {(r["level"], r["branch"]) for r in read_csv(run / "results.csv")}
    run_branch(run, "lr_rewind", levels=[2], device="cpu")
    assert job.final.read_bytes() == RunDir(clean).job(0, 2, "lr_rewind").final.read_bytes()
