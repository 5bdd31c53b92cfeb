import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ticketlab.config import TrainConfig
from ticketlab.data import batches, load_dataset
from ticketlab.masks import full_mask
from ticketlab.models import create_model, initialize
from ticketlab.prunable import prunable_names
from ticketlab.training import MaskedParams, Observer, SaveAt, Schedule, make_optimizer, train
from ticketlab.training.objectives import Objective


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", val_size=200)


def _model(data, seed=0):
    return initialize(create_model("mlp", data.input_shape, data.num_classes, widths=(32, 16)), "glorot_normal", seed)


def _random_mask(model, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.shape, generator=g) < density for n, m in full_mask(model, prunable_names(model)).items()}


@pytest.mark.parametrize(
    "opt",
    [
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-4},
    ],
)
def test_pruned_weights_and_optimizer_state_stay_exactly_zero(data, opt):
    model = _model(data)
    mask = _random_mask(model)
    cfg = TrainConfig(batch_size=32, steps="300it", eval_every="100it", **opt)
    seen = []

    # Check after every single step, not only at the end: hook the optimizer's step.
    def after_step(optimizer, *_):
        params = dict(model.named_parameters())
        for name, m in mask.items():
            p = params[name]
            held = [v for v in optimizer.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
            seen.append(all(bool((t[~m] == 0).all()) for t in [p, *held]))

    handle = register_optimizer_step_post_hook(after_step)
    try:
        train(model, data, cfg, mask=mask, data_seed=0)
    finally:
        handle.remove()
    # The post-step hook fires before the weights are re-masked, so zeros there show the gradient
    # masking alone keeps the optimizer from moving pruned weights.
    assert len(seen) == 300 * len(mask) and all(seen)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert bool((params[name][~m] == 0).all())
        assert bool((params[name][m] != 0).all())  # the kept weights did train


def test_optimizer_state_of_pruned_entries_is_zero(data):
    model = _model(data)
    mask = _random_mask(model)
    cfg = TrainConfig(optimizer="adam", lr=1e-2, batch_size=32)
    masked = MaskedParams(model, mask)
    opt = make_optimizer(list(model.parameters()), cfg)
    for _, x, y in batches(data.train, 32, 0, 0, 50):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        masked.mask_grads()
        opt.step()
        masked.mask_weights()
    for name, p in zip(masked.names, masked.params):
        state = opt.state[p]
        assert set(state) >= {"exp_avg", "exp_avg_sq"}
        for key in ("exp_avg", "exp_avg_sq"):
            assert bool((state[key][~mask[name]] == 0).all())
    masked.check(opt)


def test_schedules():
    const = Schedule(0.1, total=100)
    assert const.lr(0) == const.lr(99) == 0.1
    warm = Schedule(1.0, total=100, warmup=10)
    assert warm.lr(0) == pytest.approx(0.1) and warm.lr(9) == pytest.approx(1.0) and warm.lr(50) == 1.0
    step = Schedule(1.0, total=100, kind="step", milestones=(50, 80), gamma=0.1)
    assert [step.lr(i) for i in (49, 50, 79, 80)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    cos = Schedule(1.0, total=100, kind="cosine")
    assert cos.lr(0) == 1.0 and cos.lr(50) == pytest.approx(0.5) and cos.lr(100) == pytest.approx(0.0)


def test_schedule_from_config_reads_epochs():
    cfg = TrainConfig(steps="10ep", schedule="step", milestones=("5ep", "8ep"), warmup="3it")
    s = Schedule.from_config(cfg, per_epoch=7)
    assert s.total == 70 and s.milestones == (35, 56) and s.warmup == 3


def test_batches_resume_mid_run_exactly(data):
    full = list(batches(data.train, 64, seed=5, start=0, stop=90))
    tail = list(batches(data.train, 64, seed=5, start=37, stop=90))
    assert [b[0] for b in tail] == list(range(37, 90))
    for (_, x1, y1), (_, x2, y2) in zip(full[37:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Each epoch visits distinct examples, and epochs are shuffled differently.
    per_epoch = len(data.train) // 64
    first = torch.cat([b[2] for b in full[:per_epoch]])
    assert len(first) == per_epoch * 64
    assert not torch.equal(full[0][1], full[per_epoch][1])


def test_same_seed_same_training(data):
    cfg = TrainConfig(batch_size=32, steps="120it", eval_every="40it", lr=1e-2)
    results, weights = [], []
    for _ in range(2):
        model = _model(data, seed=3)
        results.append(train(model, data, cfg, mask=_random_mask(model), data_seed=9).summary())
        weights.append(model.state_dict())
    for k in ("final_test_acc", "best_test_acc", "early_stop_step", "train_acc"):
        assert results[0][k] == results[1][k]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_save_at_rewind_step_matches_a_run_stopped_there(data):
    # The checkpoint taken "when training passes k" equals a model trained for exactly k steps, and a run
    # stopped with until=k under the full schedule.
    cfg = TrainConfig(batch_size=32, steps="80it", eval_every="40it", lr=1e-2, schedule="cosine")
    saved = {}
    model = _model(data)
    mask = _random_mask(model)
    rewind = SaveAt(25, lambda m: saved.update({k: v.clone() for k, v in m.state_dict().items()}))
    train(model, data, cfg, mask=mask, data_seed=1, observers=[rewind])
    stopped = _model(data)
    train(stopped, data, cfg, mask=mask, data_seed=1, until=25)
    assert all(torch.equal(saved[k], v) for k, v in stopped.state_dict().items())
    constant = TrainConfig(batch_size=32, steps="80it", eval_every="40it", lr=1e-2)
    saved.clear()
    train(_model(data), data, constant, mask=mask, data_seed=1, observers=[rewind])
    short = _model(data)
    train(short, data, TrainConfig(batch_size=32, steps="25it", eval_every="40it", lr=1e-2), mask=mask, data_seed=1)
    assert all(torch.equal(saved[k], v) for k, v in short.state_dict().items())


def test_observers_see_the_start_every_step_every_evaluation_and_the_end(data):
    class Recorder(Observer):
        def __init__(self):
            self.calls = []

        def on_begin(self, model, start, end):
            self.calls.append(("begin", start, end))

        def on_step(self, step, model):
            self.calls.append(("step", step))

        def on_eval(self, step, row):
            self.calls.append(("eval", step, row["test_acc"]))

        def on_end(self, model, result):
            self.calls.append(("end", result.final_test_acc))

    rec = Recorder()
    cfg = TrainConfig(batch_size=32, steps="30it", eval_every="10it")
    result = train(_model(data), data, cfg, mask={}, data_seed=0, start=5, observers=[rec])
    assert rec.calls[0] == ("begin", 5, 30)
    assert [c[1] for c in rec.calls if c[0] == "step"] == list(range(6, 31))
    evals = [c for c in rec.calls if c[0] == "eval"]
    assert [(c[1], c[2]) for c in evals] == [(row["step"], row["test_acc"]) for row in result.metrics]
    assert [c[1] for c in evals] == [5, 10, 20, 30]
    assert rec.calls[-1] == ("end", result.final_test_acc)


def test_the_objective_decides_the_loss_that_is_minimised(data):
    # A seam for other objectives: an objective whose loss ignores the targets leaves a model that did not learn.
    class Constant(Objective):
        def loss(self, output, target):
            return output.float().pow(2).mean()

    cfg = TrainConfig(batch_size=32, steps="60it", eval_every="60it", lr=1e-2)
    learned = train(_model(data), data, cfg, mask={}, data_seed=0)
    ignored = train(_model(data), data, cfg, mask={}, data_seed=0, objective=Constant())
    assert learned.final_test_acc > ignored.final_test_acc + 0.2


def test_early_stop_uses_validation_loss(data):
    model = _model(data)
    res = train(model, data, TrainConfig(batch_size=32, steps="100it", eval_every="20it"), mask={}, data_seed=0)
    best = min(res.metrics, key=lambda r: r["val_loss"])
    assert res.early_stop_step == best["step"] and res.best_test_acc == best["test_acc"]
    assert [r["step"] for r in res.metrics] == [0, 20, 40, 60, 80, 100]


def test_divergence_is_reported_as_a_user_error(data):
    from ticketlab.errors import TicketlabError

    model = _model(data)
    cfg = TrainConfig(optimizer="sgd", lr=1e12, batch_size=32, steps="60it", eval_every="20it")
    with pytest.raises(TicketlabError, match="training diverged"):
        train(model, data, cfg, mask=_random_mask(model), data_seed=0)


@pytest.mark.parametrize(
    "options", [{"precision": "bf16"}, {"channels_last": True}, {"precision": "bf16", "channels_last": True}]
)
def test_bf16_and_channels_last_take_effect_and_keep_the_mask(options):
    data = load_dataset("synthetic-images", augment=True)
    seen = []

    def run():
        # BatchNorm included (bf16 is slow on CPUs without bf16 units: keep the model tiny)
        model = initialize(create_model("lenet5", data.input_shape, 10, width=0.5, norm="batch"), "kaiming_normal", 0)
        conv = model.features[0]
        conv.register_forward_hook(
            lambda m, inp, out: seen.append((out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last)))
        )
        mask = _random_mask(model, density=0.5)
        cfg = TrainConfig(
            optimizer="sgd", lr=0.05, momentum=0.9, batch_size=50, steps="12it", eval_every="6it", **options
        )
        result = train(model, data, cfg, mask=mask, data_seed=1)
        return model, mask, result

    model, mask, result = run()
    bf16, channels_last = options.get("precision") == "bf16", options.get("channels_last", False)
    assert seen and all(dtype == (torch.bfloat16 if bf16 else torch.float32) for dtype, _ in seen)
    # training batches arrive channels-last (evaluation batches keep the standard layout)
    assert any(layout for _, layout in seen) == channels_last
    params = dict(model.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in mask.items())
    assert all(p.is_contiguous() for p in model.parameters()), "the model is handed back in the standard layout"
    assert run()[2].metrics == result.metrics  # same seed, same result


def test_dropout_is_seeded_per_step_so_a_resumed_run_repeats_it():
    data = load_dataset("synthetic-images")
    cfg = TrainConfig(optimizer="sgd", lr=0.05, batch_size=50, steps="12it", eval_every="6it")  # no optimizer state

    def fresh():
        model = create_model("conv_2", data.input_shape, 10, width=0.125, dropout=0.5)
        return initialize(model, "kaiming_normal", 0)

    mask = full_mask(fresh(), prunable_names(fresh()))
    whole, saved = fresh(), {}
    torch.manual_seed(123)
    outside = torch.rand(3)
    torch.manual_seed(123)
    save = SaveAt(6, lambda m: saved.update(copy.deepcopy(m.state_dict())))
    train(whole, data, cfg, mask=mask, data_seed=4, observers=[save])
    assert torch.equal(torch.rand(3), outside), "the caller's random state is left alone"
    resumed = fresh()
    resumed.load_state_dict(saved)
    train(resumed, data, cfg, mask=mask, data_seed=4, start=6)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    other = fresh()
    train(other, data, cfg, mask=mask, data_seed=5)
    assert not all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), other.state_dict().values()))
