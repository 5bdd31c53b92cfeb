"""Early-bird tickets: the Hamming distance, the stop rule, stopping train(), and the command end to end."""

import pytest
import torch

from ticketlab import cli, jobs
from ticketlab import early_bird as EB
from ticketlab import masks as M
from ticketlab.config import ExperimentConfig, from_dict
from ticketlab.data import load_configured
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv, read_record, sha256_file
from ticketlab.training import Observer, train

FLAGS = (
    "--dataset synthetic --model mlp --widths 16,8 --steps 120it --eval-every 40it --batch-size 50 --lr 0.01 "
    "--replicates 1 --no-progress --density 0.2 --every 20it"
).split()


def _m(*bits):
    return {"w": torch.tensor(bits, dtype=torch.bool)}


def test_hamming_golden_values_on_four_element_masks():
    a = _m(1, 1, 0, 0)
    assert M.hamming(a, a) == 0.0
    assert M.hamming(a, _m(1, 0, 1, 0)) == 0.5  # two of four differ
    assert M.hamming(a, _m(0, 0, 1, 1)) == 1.0
    assert M.hamming(a, _m(1, 1, 0, 1)) == 0.25
    two = {"a": torch.tensor([True, False]), "b": torch.tensor([True, True])}
    assert M.hamming(two, {"a": torch.tensor([True, True]), "b": torch.tensor([True, True])}) == 0.25


def _scripted(masks, fifo=5, epsilon=0.25):
    bird = EB.EarlyBird(lambda m: None, every=1, fifo=fifo, epsilon=epsilon)
    fired = [step for step, mask in enumerate(masks, 1) if bird.see(step, mask)]
    return bird, fired


def test_stop_rule_needs_a_full_fifo_of_close_masks():
    a, b, c = _m(1, 1, 0, 0), _m(0, 0, 1, 1), _m(1, 1, 0, 1)  # a-b: 1.0, a-c: 0.25
    # identical masks: not before the FIFO holds five
    bird, fired = _scripted([a] * 7)
    assert fired == [5] and bird.emerged_at == 5 and [bird.stop(s) for s in (4, 5, 6)] == [False, True, False]
    # a far mask stays in the FIFO for four more checks: the newest is compared with every other one
    bird, fired = _scripted([a, b, a, a, a, a, a, a])
    assert fired == [7]
    assert bird.checks[5]["max_distance"] == 1.0 and bird.checks[6]["max_distance"] == 0.0
    # a distance of exactly epsilon counts as emerged; just above does not
    assert _scripted([c, a, a, a, a])[1] == [5]
    assert _scripted([c, a, a, a, a], epsilon=0.2)[1] == []
    # FIFO of 2: the newest against the one before
    assert _scripted([a, b, a, a], fifo=2)[1] == [4]


def _tiny():
    cfg = from_dict({"data": {"dataset": "synthetic"}, "model": {"model": "mlp", "widths": [16, 8]}})
    cfg = cfg.replace(train={"steps": "100it", "eval_every": "20it", "batch_size": 50, "lr": 0.01})
    data = load_configured(cfg.data, torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("mlp", data.input_shape, data.num_classes, widths=(16, 8))
    return cfg, data, model, M.full_mask(model, [n for n, _ in model.named_parameters() if n.endswith("weight")])


class _StopAt(Observer):
    def __init__(self, at):
        self.at, self.steps = at, []

    def on_step(self, step, model):
        self.steps.append(step)

    def stop(self, step):
        return step == self.at


def test_observer_stop_ends_training_at_that_step_with_a_final_evaluation():
    cfg, data, model, mask = _tiny()
    other = create_model("mlp", data.input_shape, data.num_classes, widths=(16, 8))
    other.load_state_dict(model.state_dict())
    stopper = _StopAt(30)
    result = train(model, data, cfg.train, mask=mask, data_seed=1, observers=[stopper])
    assert stopper.steps[-1] == 30 and [r["step"] for r in result.metrics] == [0, 20, 30]
    cut = train(other, data, cfg.train, mask=mask, data_seed=1, until=30)  # the same run, told to end at 30
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), other.state_dict().values()))
    assert result.metrics[-1]["test_acc"] == cut.metrics[-1]["test_acc"]
    # stopping on an evaluation step adds no second row there
    cfg, data, model, mask = _tiny()
    stopped = train(model, data, cfg.train, mask=mask, data_seed=1, observers=[_StopAt(40)])
    assert [r["step"] for r in stopped.metrics] == [0, 20, 40]


def test_early_bird_observer_stops_train_when_the_scripted_masks_converge():
    cfg, data, model, mask = _tiny()
    script = iter([_m(1, 0, 0, 0), _m(0, 1, 0, 0), _m(1, 1, 0, 0), _m(1, 1, 0, 0), _m(1, 1, 0, 0), _m(1, 1, 0, 0)])
    bird = EB.EarlyBird(lambda _: next(script), every=10, fifo=3, epsilon=0.0)
    result = train(model, data, cfg.train, mask=mask, data_seed=1, observers=[bird])
    assert bird.emerged_at == 50 and result.metrics[-1]["step"] == 50
    assert [c["step"] for c in bird.checks] == [10, 20, 30, 40, 50]


def _run(tmp_path, *extra):
    assert cli.main(["early-bird", *FLAGS, "--out", str(tmp_path), *extra]) == 0
    (path,) = [p for p in tmp_path.iterdir() if p.name.startswith("early-bird-")]
    return RunDir(path)


def _state(run):
    files = sorted(p for p in run.path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    digests = {run.rel(p): sha256_file(p) for p in files if p.name != "result.json"}
    rows = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in read_csv(run.results_file)]
    return digests, rows, read_csv(run.path / "early_bird.csv")


def test_cli_end_to_end_writes_an_imp_like_run_and_a_rerun_does_no_work(tmp_path, monkeypatch, capsys):
    run = _run(tmp_path)
    out = capsys.readouterr().out
    assert "emerged" in out and "mean ± std" in out and "estimated" in out
    level0, level1 = run.level(0, 0), run.level(0, 1)
    for f in (run.config_file, level0.init, level0.mask, level1.mask, level1.record, run.path / "early_bird.csv"):
        assert f.exists(), f
    bird = read_record(level0.path / "early_bird.json")
    steps = [c["step"] for c in bird["checks"]]
    assert steps == list(range(20, bird["emergence_step"] + 1, 20)) and all(
        len(c["distances"]) <= 4 for c in bird["checks"]
    )
    dense = read_record(run.job(0, 0, "ticket").result)
    assert (
        dense["early_stop_step"] <= bird["emergence_step"]
        and run.rel(level0.path / "early_bird.json") in dense["files"]
    )
    (row,) = read_csv(run.path / "early_bird.csv")
    assert row["emerged"] == str(bird["emerged"]) and int(row["emergence_step"]) == bird["emergence_step"]
    ticket = run.ticket(1)  # other tools read it like an IMP run
    assert abs(ticket.density - 0.2) < 0.01
    before = _state(run)
    monkeypatch.setattr(jobs, "run_job", lambda *a, **k: pytest.fail("a finished job trained again"))
    monkeypatch.setattr(EB, "train", lambda *a, **k: pytest.fail("the dense search ran again"))
    assert _run(tmp_path).path == run.path
    assert _state(run) == before


def test_a_run_killed_after_the_dense_search_resumes_to_identical_results(tmp_path, monkeypatch):
    whole = _run(tmp_path / "whole")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(EB, "run_jobs", killed)
        assert cli.main(["early-bird", *FLAGS, "--out", str(tmp_path / "killed")]) == 130
    resumed = _run(tmp_path / "killed")
    assert _state(resumed) == _state(whole)
    resumed.level(0, 1).mask.write_bytes(b"damaged")  # a damaged mask is recomputed, the same
    assert _state(_run(tmp_path / "killed")) == _state(whole)


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--density", "1.0", "--density"),
        ("--density", "0", "--density"),
        ("--epsilon", "-0.1", "--epsilon"),
        ("--fifo", "1", "--fifo"),
        ("--every", "0ep", "--every"),
        ("--rule", "bn-channels", "--rule bn-channels: mlp has no prunable layer with a BatchNorm"),
    ],  # fmt: skip
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, flag, value, says):
    assert cli.main(["early-bird", *FLAGS, "--out", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ticketlab: error: " + says) and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_options_are_checked_in_the_api():
    with pytest.raises(TicketlabError, match="--fifo"):
        EB.Options(0.2, fifo=1)
    assert EB.search_config(ExperimentConfig(), EB.Options(0.3)).imp.target_density == 0.3


def test_against_compares_with_an_imp_run_of_the_same_model_and_data_only(tmp_path, capsys):
    """--against reads the IMP ticket's accuracy and FLOPs; a run of another model (wider) would be compared
    silently with numbers that mean nothing, so it is a one-line error before any training."""
    imp = ["imp", "--dataset", "synthetic", "--model", "mlp", "--steps", "40it", "--batch-size", "50"]
    imp += ["--replicates", "1", "--levels", "1", "--baselines", "", "--no-progress", "--batch-jobs", "off"]
    assert cli.main([*imp, "--widths", "16,8", "--out", str(tmp_path / "same")]) == 0
    assert cli.main([*imp, "--widths", "32,8", "--out", str(tmp_path / "other")]) == 0
    (same,), (other,) = (list((tmp_path / d).iterdir()) for d in ("same", "other"))
    out = tmp_path / "eb"
    capsys.readouterr()
    assert cli.main(["early-bird", *FLAGS, "--out", str(out), "--against", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--against" in err and "another model or dataset" in err and "\n" not in err and not out.exists()
    assert cli.main(["early-bird", *FLAGS, "--out", str(out), "--against", str(same)]) == 0
    (row,) = read_csv(next(out.iterdir()) / "early_bird.csv")
    assert row["imp_flops_source"] == "recorded" and row["imp_level"] == "1"


def test_analyze_and_align_refuse_an_early_bird_run_in_one_line_where_it_has_no_dense_level(tmp_path, capsys):
    """Level 0 of an early-bird run stops at emergence and has no rewind state: analyze, align --level 0 and
    align --transport name that, instead of a 'rewind.safetensors missing, run ticketlab imp again' error."""
    run = _run(tmp_path, "--replicates", "2")
    for argv, says in [
        (["analyze", str(run.path)], "early-bird run"),
        (["align", str(run.path), "--points", "2"], "early-bird run"),
        (["align", str(run.path), "--level", "1", "--points", "2", "--transport", "1"], "early-bird run"),
        (["stability", str(run.path), "--between-levels"], "an early-bird run has one"),
    ]:
        capsys.readouterr()
        assert cli.main([*argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "\n" not in err and "ticketlab imp" not in err
