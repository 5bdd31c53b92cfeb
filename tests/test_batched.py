"""Batched jobs: training J jobs together gives what training them one by one gives (to float tolerance), keeps
every mask exact, keeps each job's own data order and augmentation, refuses what it cannot reproduce, and resumes
to the same bytes."""

import copy
import dataclasses
import shutil

import pytest
import torch
from conftest import tiny_config
from torch import nn

from ticketlab import batched as B
from ticketlab.config import from_dict
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.jobs import run_jobs
from ticketlab.models import create_model
from ticketlab.problem import registry_problem, user_problem
from ticketlab.prunable import prunable_names
from ticketlab.store import read_record
from ticketlab.training import train
from ticketlab.training.objectives import CLASSIFICATION


def _masks(models, keep=(1.0, 0.5, 0.2)):
    g = torch.Generator().manual_seed(3)
    names = prunable_names(models[0])
    return [
        {n: torch.rand(p.shape, generator=g) < keep[j % len(keep)] for n, p in m.named_parameters() if n in names}
        for j, m in enumerate(models)
    ]


def _both(models, data, cfg, masks, seeds):
    alone = [copy.deepcopy(m) for m in models]
    together = [copy.deepcopy(m) for m in models]
    one = [train(m, data, cfg, mask=k, data_seed=s) for m, k, s in zip(alone, masks, seeds)]
    many = B.train_batched(together, data, cfg, masks=masks, data_seeds=seeds)
    return alone, together, one, many


def _assert_close(alone, together):
    for a, b in zip(alone, together):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5), name


TRAIN = {"batch_size": 50, "steps": "25it", "eval_every": "10it"}


@pytest.mark.parametrize(
    "train_cfg",
    [
        {"optimizer": "adam", "lr": 1e-2},
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    ],
    ids=["adam", "sgd-nesterov-wd"],
)
def test_batched_mlp_jobs_end_where_one_by_one_training_ends(train_cfg):
    cfg = tiny_config(train={**TRAIN, **train_cfg})
    data = load_dataset("synthetic")
    problem = registry_problem(cfg, data)
    models = [problem.init_model(j) for j in range(5)]
    masks, seeds = _masks(models), [0, 0, 1, 1, 2]  # jobs sharing a data seed share batches; others do not
    alone, together, one, many = _both(models, data, cfg.train, masks, seeds)
    _assert_close(alone, together)
    for r1, r2 in zip(one, many):
        assert len(r1.metrics) == len(r2.metrics) == 4  # steps 0, 10, 20, 25
        for a, b in zip(r1.metrics, r2.metrics):
            assert a["step"] == b["step"] and a["lr"] == b["lr"]
            assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
            assert b.get("train_loss", 0) == pytest.approx(a.get("train_loss", 0), rel=1e-4)
    # a data seed shared by two jobs does not make them equal: their masks differ
    assert not torch.equal(together[0].fc[0].weight, together[1].fc[0].weight)


def test_batch_norm_conv_jobs_with_augmentation_match_one_by_one_buffers_included():
    data = load_dataset("synthetic-images", augment=True)
    cfg = from_dict(
        {
            "data": {"dataset": "synthetic-images"},
            "model": {"model": "conv_2", "width": 0.125, "norm": "batch"},
            # few steps: with BatchNorm, float rounding differences grow by about 10x per step (measured 3e-7 after
            # one step, 1e-4 after eight), as they would between two thread counts
            "train": {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "batch_size": 32, "steps": "3it"},
        }
    )
    models = [registry_problem(cfg, data).init_model(j) for j in range(3)]
    assert any(n.endswith("running_mean") for n, _ in models[0].named_buffers())
    masks = _masks(models)
    alone, together, _, _ = _both(models, data, cfg.train, masks, [5, 6, 7])
    _assert_close(alone, together)  # running statistics too: each job's own batches and crops
    for model, mask in zip(together, masks):
        params = dict(model.named_parameters())
        assert all(bool((params[n][~m] == 0).all()) for n, m in mask.items())


def test_pruned_weights_stay_exactly_zero_in_every_batched_job():
    cfg = tiny_config(train={**TRAIN, "lr": 5e-2})
    data = load_dataset("synthetic")
    models = [registry_problem(cfg, data).init_model(j) for j in range(4)]
    masks = _masks(models, keep=(0.3, 0.1))
    B.train_batched(models, data, cfg.train, masks=masks, data_seeds=[0, 1, 2, 3])
    for model, mask in zip(models, masks):
        params = dict(model.named_parameters())
        for name, m in mask.items():
            assert bool((params[name][~m] == 0).all()), name
            assert bool((params[name][m] != 0).any()), name  # and the kept ones trained


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(20, 20), nn.Linear(20, 20)
        self.b.weight = self.a.weight
        self.out = nn.Linear(20, 10)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


def test_tied_weights_train_batched_as_one_tensor_per_job():
    data = load_dataset("synthetic")
    cfg = tiny_config(train=TRAIN).train
    torch.manual_seed(0)
    models = [Tied() for _ in range(3)]
    masks = [{"a.weight": torch.rand(20, 20) < 0.5, "out.weight": torch.ones(10, 20, dtype=torch.bool)} for _ in models]
    alone, together, _, _ = _both(models, data, cfg, masks, [0, 1, 2])
    _assert_close(alone, together)
    assert all(m.a.weight is m.b.weight for m in together)


def test_a_network_that_draws_random_numbers_is_trained_one_by_one_and_the_reason_said(tmp_path, capsys):
    data = load_dataset("synthetic")
    cfg = tiny_config()
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    assert "dropout" in B.unbatchable(model, cfg.train, data, CLASSIFICATION)
    assert B.unbatchable(model[:2], cfg.train, data, CLASSIFICATION) is None
    # through a whole run: each job trains alone, so the results are those of --batch-jobs off
    problem = user_problem(model, data, 0)
    auto = run_imp(cfg, problem, tmp_path / "auto", quiet=True)
    said = capsys.readouterr().err
    assert said.count("training jobs one by one: the network draws random numbers") == 1  # once, not per level
    off = run_imp(cfg, problem, tmp_path / "off", quiet=True, batch_jobs="off")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]  # noqa: E731
    assert strip(auto.results(cfg)) == strip(off.results(cfg))
    assert read_record(auto.job(0, 1, "reinit").result)["batched_with"] == 1


def test_a_level_of_every_replicate_is_one_pass_and_its_records_say_so(tmp_path):
    cfg = tiny_config(imp={"levels": 1, "replicates": 2})
    problem = registry_problem(cfg, load_dataset("synthetic"))
    lists = []

    def recording(run, jobs, *, progress=False):
        lists.append([(j.files.replicate, j.files.branch) for j in jobs])
        return run_jobs(run, jobs, progress=progress, batch_jobs="auto")

    run = run_imp(cfg, problem, tmp_path, executor=recording, quiet=True)
    assert lists == [
        [(0, "ticket"), (1, "ticket")],
        [(r, b) for r in (0, 1) for b in ("ticket", "reinit", "random_prune")],
    ]
    assert read_record(run.job(1, 1, "random_prune").result)["batched_with"] == 6
    assert read_record(run.job(0, 0, "ticket").result)["batched_with"] == 2


def test_passes_are_capped_at_k_and_split_evenly(tmp_path):
    cfg = tiny_config(imp={"levels": 1, "replicates": 5, "baselines": ()})
    run = run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path, quiet=True, batch_jobs=2)
    sizes = [read_record(run.job(r, 1, "ticket").result)["batched_with"] for r in range(5)]
    assert sizes == [1, 2, 2, 2, 2]  # 5 jobs, at most 2 at a time: 1 + 2 + 2, in order


def test_a_resumed_batched_level_trains_the_same_passes_and_ends_with_the_same_bytes(tmp_path):
    cfg = tiny_config(imp={"levels": 2})
    problem = registry_problem(cfg, load_dataset("synthetic"))
    whole = run_imp(cfg, problem, tmp_path / "whole", quiet=True)
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    # as if killed after writing one job of level 2's pass and before the others finished
    for branch in ("reinit", "random_prune"):
        shutil.rmtree(tmp_path / "cut" / "replicate_0" / "level_2" / branch)
    (tmp_path / "cut" / "results.csv").unlink()
    cut = run_imp(cfg, problem, tmp_path / "cut", quiet=True)
    files = sorted(p.relative_to(whole.path) for p in whole.path.rglob("*.safetensors"))
    assert files == sorted(p.relative_to(cut.path) for p in cut.path.rglob("*.safetensors"))
    assert all((whole.path / f).read_bytes() == (cut.path / f).read_bytes() for f in files)
    assert read_record(cut.job(0, 2, "reinit").result)["batched_with"] == 3


def test_auto_batches_small_networks_on_a_cpu_and_leaves_big_ones_alone():
    cpu = torch.device("cpu")
    cfg = tiny_config().train
    small = create_model("mlp", (40,), 10)
    big = create_model("lenet_300_100", (1, 28, 28), 10)
    assert B.jobs_per_pass("auto", small, cfg, cpu) == B.AUTO_MAX_JOBS
    lenet = dataclasses.replace(cfg, batch_size=128)  # 34M multiply-accumulates a step: only with many jobs
    assert B.jobs_per_pass("auto", big, lenet, cpu, jobs=3) == 1
    assert B.jobs_per_pass("auto", big, lenet, cpu, jobs=9) == B.AUTO_MAX_JOBS
    assert B.jobs_per_pass("auto", big, dataclasses.replace(cfg, batch_size=512), cpu, jobs=9) == 1
    assert B.jobs_per_pass("off", small, cfg, cpu) == 1
    assert B.jobs_per_pass(4, big, cfg, cpu) == 4


@pytest.mark.parametrize("value", ["0", "-3", "fast", "2.5", ""])
def test_a_bad_batch_jobs_setting_is_refused_in_one_line(value):
    with pytest.raises(TicketlabError, match="--batch-jobs .*give auto, off, or a number"):
        B.parse_setting(value)
    assert B.parse_setting(" AUTO ") == "auto" and B.parse_setting("7") == 7


def test_batched_level_0_saves_each_replicates_rewind_point_as_one_by_one_training_does(tmp_path):
    from ticketlab.store import load_tensors

    cfg = tiny_config(imp={"levels": 1, "replicates": 2, "rewind": "20it"}, train={"steps": "40it"})
    problem = registry_problem(cfg, load_dataset("synthetic"))
    together = run_imp(cfg, problem, tmp_path / "auto", quiet=True)
    alone = run_imp(cfg, problem, tmp_path / "off", quiet=True, batch_jobs="off")
    assert read_record(together.job(1, 0, "ticket").result)["batched_with"] == 2
    for r in (0, 1):
        a, b = load_tensors(together.level(r, 0).rewind), load_tensors(alone.level(r, 0).rewind)
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-5) for n in a)
        assert not torch.equal(a["fc.0.weight"], load_tensors(together.level(r, 0).init)["fc.0.weight"])  # step 20
