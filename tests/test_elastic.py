"""Elastic tickets (Chen et al. 2021): a ResNet ticket stretched or squeezed to another depth, then trained."""

import csv

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.cli import main
from ticketlab.config import from_dict
from ticketlab.data import load_dataset
from ticketlab.elastic import block_sources, elastic, transform
from ticketlab.errors import TicketlabError
from ticketlab.imp import imp
from ticketlab.models import create_model
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir

SHAPE = (3, 32, 32)


def _resnet(depth: int):
    return create_model(f"resnet{depth}", SHAPE, 10, width=0.25)


def _random_mask(model, seed=0) -> M.Mask:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in model.named_parameters() if p.dim() > 1}


@pytest.mark.parametrize(("depth", "blocks"), [(8, 1), (14, 2), (20, 3), (32, 5), (44, 7)])
def test_resnets_of_depth_6n_plus_2_have_n_blocks_per_stage(depth, blocks):
    model = _resnet(depth)
    assert len(model.blocks) == 3 * blocks
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_block_sources_keep_block_0_replicate_trailing_blocks_and_drop_later_ones():
    assert block_sources(3, 5) == [0, 1, 2, 1, 2]  # ResNet-20 -> 32: blocks 1, 2 appended again
    assert block_sources(3, 9) == [0, 1, 2, 1, 2, 1, 2, 1, 2]  # -> 56
    assert block_sources(3, 4) == [0, 1, 2, 2]  # the last one when they do not divide
    assert block_sources(5, 3) == [0, 1, 2]  # squeeze: the later blocks dropped
    assert block_sources(1, 2) == [0, 0]  # only the downsampling block exists
    assert block_sources(3, 3) == [0, 1, 2]


@pytest.mark.parametrize(("source", "target"), [(20, 32), (32, 20), (8, 14), (14, 8), (20, 56)])
def test_transformed_mask_has_the_target_names_and_shapes_and_the_source_blocks_masks(source, target):
    src, tgt = _resnet(source), _resnet(target)
    mask = _random_mask(src)
    out = transform(mask, src, tgt)
    shapes = {n: p.shape for n, p in tgt.named_parameters() if p.dim() > 1}
    assert sorted(out) == sorted(shapes) and all(out[n].shape == shapes[n] for n in out)
    assert torch.equal(out["conv.weight"], mask["conv.weight"]) and torch.equal(out["fc.weight"], mask["fc.weight"])
    s, t = (source - 2) // 6, (target - 2) // 6
    for stage in range(3):
        for j, k in enumerate(block_sources(s, t)):
            a, b = f"blocks.{stage * t + j}.", f"blocks.{stage * s + k}."
            for name in ("conv1.weight", "conv2.weight", "shortcut.0.weight"):
                if a + name not in out:
                    continue
                if out[a + name].shape == mask[b + name].shape:
                    assert torch.equal(out[a + name], mask[b + name])  # replicated block: its source's mask
                else:  # a replica of a downsampling block reads twice the channels: tiled, same density
                    assert stage > 0 and j > 0 and name == "conv1.weight"
                    assert torch.equal(out[a + name], mask[b + name].repeat(1, 2, 1, 1))
                assert M.density({name: out[a + name]}) == M.density({name: mask[b + name]})


def test_squeezing_a_stretched_mask_gives_the_source_mask_back():
    src, deep = _resnet(20), _resnet(44)
    mask = _random_mask(src, seed=3)
    back = transform(transform(mask, src, deep), deep, src)
    assert sorted(back) == sorted(mask) and all(torch.equal(back[n], mask[n]) for n in mask)


def test_transform_refuses_other_families_and_other_widths():
    src = _resnet(20)
    with pytest.raises(TicketlabError, match="CIFAR ResNets"):
        transform(_random_mask(src), src, create_model("vgg11", SHAPE, 10, width=0.25))
    with pytest.raises(TicketlabError, match="differ only in depth"):
        transform(_random_mask(src), src, create_model("resnet32", SHAPE, 10, width=0.5))


def _tiny_resnet_run(out, model="resnet8", width=0.25):
    cfg = from_dict(
        {
            "data": {"dataset": "synthetic-images"},
            "model": {"model": model, "width": width},
            "train": {"optimizer": "adam", "lr": 1e-2, "batch_size": 100, "steps": "4it", "eval_every": "4it"},
            "prune": {"strategy": "layerwise", "fraction": 0.5},
            "imp": {"levels": 1, "replicates": 1, "baselines": (), "rewind": "2it"},
        }
    )
    return imp(cfg, out=out)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished resnet8 run (one level, one replicate), shared by the end-to-end tests."""
    return _tiny_resnet_run(tmp_path_factory.mktemp("source"))


def test_elastic_run_writes_the_table_and_a_second_call_trains_nothing(source, tmp_path, capsys):
    code = main(["elastic", str(source.path), "--to", "resnet14", "--out", str(tmp_path / "el"), "--no-progress"])
    assert code == 0
    where = next((tmp_path / "el").glob("elastic-resnet8-to-resnet14-*"))
    rows = list(csv.DictReader((where / "elastic.csv").open()))
    assert [r["level"] for r in rows] == ["1"] and rows[0]["n"] == "1"
    assert 0 <= float(rows[0]["elastic_acc_mean"]) <= 1 and rows[0]["random_acc_std"] == ""
    ticket = M.load_mask(where / "replicate_0" / "level_1" / "elastic" / "mask.safetensors")
    chance = M.load_mask(where / "replicate_0" / "level_1" / "random" / "mask.safetensors")
    assert M.layer_densities(ticket) == M.layer_densities(chance) and M.hamming(ticket, chance) > 0
    assert float(rows[0]["density"]) == pytest.approx(M.density(ticket), abs=0.01)
    stamps = sorted(p.stat().st_mtime_ns for p in where.rglob("result.json"))
    capsys.readouterr()
    path, again = elastic(source.path, "resnet14", out=tmp_path / "el")
    assert path == where and sorted(p.stat().st_mtime_ns for p in where.rglob("result.json")) == stamps
    assert [r["elastic_acc_mean"] for r in again] == [float(r["elastic_acc_mean"]) for r in rows]
    _, twice = elastic(source.path, "resnet14", levels=[1, 1], out=tmp_path / "el")  # a level given twice: once
    assert [(r["level"], r["n"]) for r in twice] == [(1, 1)]


def test_elastic_joins_runs_at_the_target_depth_and_refuses_other_models(source, tmp_path):
    own = _tiny_resnet_run(tmp_path, "resnet14")
    _, rows = elastic(source.path, "resnet14", out=tmp_path / "el", against=[own.path])
    assert rows[0]["imp_density"] == pytest.approx(own.ticket(1).density) and rows[0]["imp_n"] == 1
    with pytest.raises(TicketlabError, match="compare with resnet14 runs"):
        elastic(source.path, "resnet14", out=tmp_path / "el", against=[source.path])
    wider = _tiny_resnet_run(tmp_path / "wide", "resnet14", width=0.5)
    with pytest.raises(TicketlabError, match="another width .* than the source run"):
        elastic(source.path, "resnet14", out=tmp_path / "el", against=[wider.path])
    with pytest.raises(TicketlabError, match="the --to model is 'vgg11'"):
        elastic(source.path, "vgg11", out=tmp_path / "el")


def test_elastic_refuses_a_source_run_that_is_not_a_resnet(tmp_path):
    source = imp(tiny_config(imp={"levels": 1, "baselines": ()}), out=tmp_path)
    with pytest.raises(TicketlabError, match="source run's model is 'mlp'"):
        elastic(source.path, "resnet14", out=tmp_path / "el")


def test_elastic_on_a_run_without_a_finished_level_is_one_line_naming_that(tmp_path, capsys):
    cfg = from_dict({"data": {"dataset": "synthetic-images"}, "model": {"model": "resnet8", "width": 0.25}})
    run = RunDir(tmp_path / "fresh")
    with run.lock():
        run.claim(cfg, registry_problem(cfg, load_dataset("synthetic-images")).identity)
    assert main(["elastic", str(run.path), "--to", "resnet14", "--out", str(tmp_path / "el")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no finished pruned level" in err and "\n" not in err
