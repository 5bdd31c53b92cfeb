"""On a CUDA GPU: the mask stays exact, the data stays on the device, and IMP is repeatable.

Marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is False (CPU-only CI); ``pytest -m gpu`` runs them,
as ``benchmarks/gpu_check.sh`` does on a GPU machine.
"""

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab import training
from ticketlab.config import TrainConfig
from ticketlab.data import batches, load_dataset
from ticketlab.imp import imp
from ticketlab.models import create_model, initialize
from ticketlab.prunable import prunable_names
from ticketlab.rundir import RunDir
from ticketlab.training import make_optimizer, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


def half_mask(model: torch.nn.Module, seed: int = 0) -> M.Mask:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: (torch.rand(params[n].shape, generator=g) < 0.5).to(CUDA) for n in prunable_names(model)}


@pytest.mark.parametrize(
    "optimizer, momentum, precision",
    [("adam", 0.0, "fp32"), ("sgd", 0.9, "fp32"), ("adam", 0.0, "bf16")],
)
def test_training_on_cuda_keeps_pruned_weights_and_optimizer_state_exactly_zero(
    optimizer, momentum, precision, monkeypatch
):
    data = load_dataset("synthetic", device=CUDA)
    model = initialize(create_model("mlp", data.input_shape, 10, widths=(64, 32)), "kaiming_normal", 0).to(CUDA)
    mask = half_mask(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    made = []

    def keep(params, cfg):  # the optimizer train() makes, kept to read its state after
        made.append(make_optimizer(params, cfg))
        return made[-1]

    monkeypatch.setattr(training, "make_optimizer", keep)
    cfg = TrainConfig(optimizer=optimizer, lr=1e-2, momentum=momentum, batch_size=50, steps="80it", precision=precision)
    result = train(model, data, cfg, mask=mask, data_seed=0)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        p = params[name]
        assert p.device.type == "cuda"
        assert bool((p[~m] == 0).all()), f"{name}: a pruned weight moved on the GPU"
        assert bool((p[m] != before[name][m]).any()), f"{name}: the alive weights did not train"
        state = [v for v in made[0].state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
        assert state, f"{name}: {optimizer} keeps per-weight state"
        for v in state:
            assert v.device.type == "cuda" and bool((v[~m] == 0).all()), f"{name}: pruned optimizer state is nonzero"
            assert bool((v[m] != 0).any()), f"{name}: the alive weights' optimizer state stayed zero"
    assert result.final_test_acc > 0.5  # the synthetic clusters are easy: training on the GPU did learn


def test_the_data_stays_on_the_device():
    for name, augment in (("synthetic", False), ("synthetic-images", True)):
        data = load_dataset(name, device=CUDA, augment=augment)
        for split in (data.train, data.test):
            assert split.x.device.type == "cuda" and split.y.device.type == "cuda"
            if split.scale is not None:
                assert split.scale.device.type == "cuda" and split.shift.device.type == "cuda"
        for _, x, y in batches(data.train, 32, 0, 0, 5, augment=augment):
            assert x.device.type == "cuda" and y.device.type == "cuda" and x.dtype == torch.float32


def test_a_short_imp_run_on_cuda_gives_the_same_masks_when_run_again(tmp_path):
    cfg = tiny_config(imp={"levels": 2, "baselines": ("random_prune",)})
    runs = [imp(cfg, out=tmp_path / name, device="cuda") for name in ("a", "b")]
    for level in range(3):
        a, b = (M.load_mask(RunDir(run.path).level(0, level).mask) for run in runs)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), f"level {level}: masks differ"
    assert M.density(M.load_mask(RunDir(runs[0].path).level(0, 2).mask)) < 0.5  # it did prune


def test_batched_jobs_on_cuda_end_where_one_by_one_training_ends():
    import copy

    from ticketlab.batched import train_batched

    data = load_dataset("synthetic", device=CUDA)
    cfg = TrainConfig(optimizer="adam", lr=1e-2, batch_size=50, steps="15it", eval_every="5it")
    models = [initialize(create_model("mlp", data.input_shape, 10, widths=(64, 32)), "kaiming_normal", 0).to(CUDA)]
    models += [copy.deepcopy(models[0]) for _ in range(2)]
    masks = [half_mask(models[0], seed) for seed in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    for model, mask, seed in zip(alone, masks, (0, 1, 2)):
        train(model, data, cfg, mask=mask, data_seed=seed)
    train_batched(models, data, cfg, masks=masks, data_seeds=[0, 1, 2])
    for a, b in zip(alone, models):
        for (name, x), y in zip(a.named_parameters(), b.parameters()):
            assert y.device.type == "cuda" and torch.allclose(x, y, rtol=1e-4, atol=1e-5), name
