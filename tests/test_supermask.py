"""Strong lottery tickets (ticketlab.supermask): frozen weights, exact per-layer counts, the straight-through
gradients worked out by hand, zhou's sampling statistics, biprop's binarisation, the signed constant, determinism
and the option errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ticketlab.config import TrainConfig
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.models import signed_constant
from ticketlab.prunable import prunable_names
from ticketlab.pruning.topk import straight_through_topk
from ticketlab.supermask import Supermask, binary_activation, check_frozen, frozen_state, learn_supermask, random_like
from ticketlab.training import train

METHODS = ("zhou", "edge-popup", "biprop")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", val_size=200)


@pytest.fixture(scope="module")
def images():
    return load_dataset("synthetic-images")


def _mlp(seed: int = 0, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 7, 3, stride=2),
        nn.BatchNorm2d(7),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(7, 10),
    )
    with torch.no_grad():  # BatchNorm affine parameters away from their (1, 0) default, so a change would show
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net


def _cfg(steps: str = "40it") -> TrainConfig:
    return TrainConfig(optimizer="adam", lr=0.1, batch_size=32, steps=steps, eval_every=steps)


def _set(sm: Supermask, i: int, values) -> None:
    with torch.no_grad():
        sm.scores[i].copy_(torch.as_tensor(values, dtype=sm.scores[i].dtype).view_as(sm.scores[i]))


# ------------------------------------------------------------------------------------------ 1. frozen weights


@pytest.mark.parametrize("method", METHODS)
def test_weights_biases_and_batchnorm_stay_bit_identical_while_the_scores_learn(images, method):
    model = _convnet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    running = model[1].running_mean.clone()
    names = prunable_names(model)
    assert "1.weight" not in names and "0.bias" in dict(model.named_parameters())
    initial = Supermask(copy.deepcopy(model), names, method, k=0.5, seed=3)  # the same scores learn_supermask starts
    res = learn_supermask(model, images, _cfg("12it"), method=method, k=0.5, seed=3)
    after = dict(model.named_parameters())
    assert set(after) == set(before) and {"0.bias", "1.weight", "1.bias", "5.bias"} <= set(after)
    for n, p in after.items():
        assert torch.equal(p.detach(), before[n]), n
        assert not p.requires_grad
    check_frozen(model, before)
    for s0, s1 in zip(initial.scores, res.supermask.scores):
        assert (s1.detach() - s0.detach()).abs().max() > 1e-3  # the scores did train
    assert not torch.equal(model[1].running_mean, running)  # BatchNorm statistics still follow the data


def test_check_frozen_catches_a_single_changed_bit():
    model = _mlp()
    before = frozen_state(model)
    with torch.no_grad():
        w = model[3].bias
        w[0] = torch.nextafter(w[0], torch.tensor(math.inf))
    with pytest.raises(AssertionError, match="3.bias"):
        check_frozen(model, before)


def test_the_optimizer_holds_only_the_scores(data):
    sm = Supermask(_mlp(), ["1.weight", "3.weight"], "edge-popup", k=0.5)
    assert [n for n, p in sm.named_parameters() if p.requires_grad] == ["scores.0", "scores.1"]
    held: list[set[int]] = []

    def after_step(optimizer, _args, _kwargs):
        held.append({id(p) for group in optimizer.param_groups for p in group["params"]})

    handle = register_optimizer_step_post_hook(after_step)
    try:
        train(sm, data, _cfg("5it"), mask={}, data_seed=0, kernels="off")
    finally:
        handle.remove()
    assert len(held) == 5 and all(h == {id(s) for s in sm.scores} for h in held)


# ------------------------------------------------------------------------------------------ 2. exact k per layer


def _odd_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(7, 11), nn.ReLU(), nn.Linear(11, 3), nn.ReLU(), nn.Linear(3, 1), nn.Linear(1, 1))


# round(k * size), at least 1, by hand: sizes 77, 33, 3, 1 (MLP) and 189, 70 (conv 7x3x3x3, Linear 7 -> 10).
# Python's round takes halves to even: 38.5 -> 38, 16.5 -> 16, 1.5 -> 2, 94.5 -> 94.
EXPECTED_COUNTS = {
    0.3: ([23, 10, 1, 1], [57, 21]),
    0.5: ([38, 16, 2, 1], [94, 35]),
    0.7: ([54, 23, 2, 1], [132, 49]),
}


@pytest.mark.parametrize("method", ["edge-popup", "biprop"])
@pytest.mark.parametrize("k", [0.3, 0.5, 0.7])
def test_edge_popup_and_biprop_keep_exactly_round_k_size_per_layer(method, k):
    for model, counts, x in [
        (_odd_mlp(), EXPECTED_COUNTS[k][0], torch.randn(5, 7)),
        (_convnet(), EXPECTED_COUNTS[k][1], torch.randn(2, 3, 9, 9)),
    ]:
        model.eval()
        names = prunable_names(model)
        sm = Supermask(model, names, method, k=k, seed=4).eval()
        mask = sm.mask()
        assert [int(mask[n].sum()) for n in names] == counts
        params = dict(model.named_parameters())
        eff = sm.effective_weights()
        for n in names:
            assert bool((params[n] != 0).all())
            assert torch.equal(eff[n] != 0, mask[n])  # the forward's weights are the mask's
        # the forward computes with exactly these weights
        masked = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in masked.named_parameters():
                if n in eff:
                    p.copy_(eff[n])
        assert torch.equal(sm(x), masked(x))


# ------------------------------------------------------------------------------------------ 3. gradients by hand

W4 = [0.5, -1.0, 2.0, -0.25]
X4 = [1.0, 2.0, -1.0, 3.0]


def _four(method: str, scores, **kw) -> Supermask:
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([W4]))
    sm = Supermask(lin, ["weight"], method, k=0.5, **kw)
    _set(sm, 0, scores)
    return sm


def test_edge_popup_gradient_reaches_every_score_by_hand():
    sm = _four("edge-popup", [0.3, -0.8, 0.1, -0.6])  # |s| keeps weights 1 and 3
    out = sm(torch.tensor([X4]))
    # kept: w1 x1 + w3 x3 = (-1)(2) + (-0.25)(3)
    assert out.item() == -2.75
    out.sum().backward()
    # d out / d s_i = w_i x_i sign(s_i): (0.5)(1)(+1), (-1)(2)(-1), (2)(-1)(+1), (-0.25)(3)(-1), kept or not
    assert sm.scores[0].grad.flatten().tolist() == [0.5, 2.0, -2.0, 0.75]


def test_zhou_gradient_passes_straight_through_the_sample_by_hand():
    log3 = math.log(3.0)  # sigmoid(+-log 3) = 0.75 / 0.25, so sigmoid' = 3/16; sigmoid'(0) = 1/4
    sm = _four("zhou", [0.0, log3, -log3, 0.0]).train()
    torch.manual_seed(7)
    out = sm(torch.tensor([X4]))
    torch.manual_seed(7)
    draw = torch.bernoulli(torch.sigmoid(sm.scores[0].detach())).flatten()
    assert out.item() == pytest.approx(sum(w * x * float(b) for w, x, b in zip(W4, X4, draw)), abs=1e-6)
    out.sum().backward()
    # w_i x_i sigmoid'(s_i): (0.5)(1)/4, (-1)(2)(3/16), (2)(-1)(3/16), (-0.25)(3)/4, whatever the draw
    torch.testing.assert_close(
        sm.scores[0].grad.flatten(), torch.tensor([0.125, -0.375, -0.375, -0.1875]), rtol=1e-6, atol=1e-7
    )


def test_straight_through_topk_forward_count_and_identity_gradient():
    s = torch.tensor([0.3, -0.8, 0.1, 0.6, 0.5], requires_grad=True)
    m = straight_through_topk(s, 2)
    assert m.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0] and m.dtype == s.dtype
    m.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert s.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    ties = torch.zeros(7, 3)
    for keep in (0, 1, 10, 21):
        once = straight_through_topk(ties, keep)
        assert int(once.sum()) == keep and torch.equal(once, straight_through_topk(ties, keep))


# ------------------------------------------------------------------------------------------ 4. zhou's sampling


def test_zhou_training_draws_track_sigmoid_and_evaluation_is_fixed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(500, 200), nn.Linear(200, 500), nn.Linear(500, 200))  # 100 000 weights each
    names = ["0.weight", "1.weight", "2.weight"]
    ps = [0.1, 0.5, 0.9]
    sm = Supermask(net, names, "zhou", k=0.5, seed=5)
    for i, p in enumerate(ps):
        _set(sm, i, torch.full(sm.scores[i].shape, math.log(p / (1 - p))))
    params = dict(net.named_parameters())
    assert all(bool((params[n] != 0).all()) for n in names)
    sm.train()
    samples = 20
    density = torch.zeros(3, dtype=torch.float64)
    first = None
    for _ in range(samples):
        eff = sm.effective_weights()
        first = first if first is not None else eff["0.weight"] != 0
        density += torch.tensor([float((eff[n] != 0).double().mean()) for n in names], dtype=torch.float64)
    density /= samples
    # std of the mean at p = 0.5: sqrt(0.25 / 1e5 / 20) = 3.5e-4, so 0.0025 is > 7 sigma
    assert density.tolist() == pytest.approx(ps, abs=0.0025)
    assert not torch.equal(first, sm.effective_weights()["0.weight"] != 0)  # a new draw each training step

    sm.eval()
    once, again = sm.effective_weights(), sm.effective_weights()
    x = torch.randn(3, 500)
    assert all(torch.equal(once[n], again[n]) for n in names) and torch.equal(sm(x), sm(x))
    mask = sm.mask()
    assert all(torch.equal(mask[n], once[n] != 0) for n in names)
    assert [float(mask[n].float().mean()) for n in names] == pytest.approx(ps, abs=0.01)

    sm.evaluation = "expected"
    expected = sm.effective_weights()
    for i, n in enumerate(names):
        assert torch.equal(expected[n], params[n] * torch.sigmoid(sm.scores[i].detach()))


# ------------------------------------------------------------------------------------------ 5. biprop


def test_biprop_binarised_weights_by_hand():
    sm = _four("biprop", [0.1, -0.8, 0.6, 0.3])  # keeps weights 1 and 2: alpha = (|-1| + |2|) / 2 = 1.5
    assert sm.mask()["weight"].flatten().tolist() == [False, True, True, False]
    assert sm.binarised()["weight"].flatten().tolist() == [1.5, -1.5, 1.5, -1.5]
    assert sm.effective_weights()["weight"].flatten().tolist() == [0.0, -1.5, 1.5, 0.0]
    assert sm(torch.tensor([X4])).item() == (-1.5) * 2.0 + 1.5 * (-1.0)


def test_biprop_two_values_per_layer_with_alpha_the_mean_kept_magnitude():
    model = _convnet()
    names = prunable_names(model)
    sm = Supermask(model, names, "biprop", k=0.3, seed=2)
    mask, binar, eff = sm.mask(), sm.binarised(), sm.effective_weights()
    params = dict(model.named_parameters())
    for n in names:
        w, m = params[n].detach(), mask[n]
        alpha = float(w.abs()[m].double().mean())
        values = sorted(set(binar[n].flatten().tolist()))
        assert len(values) == 2 and values[0] == -values[1] and values[1] == pytest.approx(alpha, rel=1e-6)
        assert torch.equal(binar[n], torch.sign(w) * values[1])
        assert set(eff[n][m].tolist()) == set(values)
        assert bool((eff[n][~m] == 0).all())
        assert values[1] != pytest.approx(float(w.abs().mean()), rel=1e-3)  # alpha is over the kept weights only


def test_binary_activations_feed_only_signs_past_the_first_layer_and_still_train_every_score():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    names = ["0.weight", "2.weight", "4.weight"]
    seen: dict[str, list[torch.Tensor]] = {}

    def record(name):  # a forward hook sees the inputs as the layer read them, after every pre-hook
        return lambda _m, args, _out: seen.setdefault(name, []).append(args[0].detach().clone())

    for i in (0, 2, 4):
        net[i].register_forward_hook(record(str(i)))
    x = torch.randn(16, 6) * 3
    plain = Supermask(copy.deepcopy(net), names, "biprop", k=0.5)
    plain(x)
    assert not set(seen["2"][0].unique().tolist()) <= {-1.0, 0.0, 1.0}  # without the option, real values
    seen.clear()
    sm = Supermask(net, names, "biprop", k=0.5, binary_activations=True, first="0.weight")
    sm(x).square().sum().backward()
    for layer in ("2", "4"):
        assert set(seen[layer][0].unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert {-1.0, 1.0} <= set(seen[layer][0].unique().tolist())
    assert torch.equal(seen["0"][0], x)  # the first layer reads the raw input
    for s in sm.scores:
        assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_binary_activation_gradient_is_hard_tanh():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = binary_activation(x)
    assert y.tolist() == [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]
    y.backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0.0, 3.0, 3.0, 3.0, 3.0, 3.0, 0.0]


# ------------------------------------------------------------------------------------------ 6. signed constant


@pytest.mark.parametrize(
    "layer, fan_in",
    [(nn.Linear(7, 5), 7), (nn.Conv2d(3, 4, 3), 27), (nn.Conv2d(4, 6, (3, 2), groups=2), 12)],
)
@pytest.mark.parametrize("k", [1.0, 0.5, 0.3])
def test_signed_constant_magnitude_and_signs(layer, fan_in, k):
    torch.manual_seed(0)
    net = nn.Sequential(copy.deepcopy(layer))
    before = net[0].weight.detach().clone()
    bias = net[0].bias.detach().clone()
    signed_constant(net, ["0.weight"], k)
    w = net[0].weight.detach()
    assert torch.equal(w.abs(), torch.full_like(w, math.sqrt(2.0 / (fan_in * k))))
    assert torch.equal(torch.sign(w), torch.sign(before))
    assert torch.equal(net[0].bias, bias)


def test_learn_supermask_with_signed_constant_weights(data):
    model = _mlp()
    signs = {n: torch.sign(p.detach()) for n, p in model.named_parameters()}
    res = learn_supermask(model, data, _cfg("10it"), method="edge-popup", k=0.5, weights="signed-constant")
    w = model[1].weight.detach()
    assert torch.equal(w.abs(), torch.full_like(w, math.sqrt(2.0 / (20 * 0.5))))
    assert torch.equal(torch.sign(w), signs["1.weight"]) and res.density == 0.5


# ------------------------------------------------------------------------------------------ 7. determinism


def test_same_seed_same_mask_and_accuracy_and_random_like_keeps_counts(data):
    runs = [learn_supermask(_mlp(), data, _cfg(), method=m, k=0.3, seed=1) for m in ("edge-popup", "edge-popup")]
    a, b = runs
    assert a.mask.keys() == b.mask.keys() and all(torch.equal(a.mask[n], b.mask[n]) for n in a.mask)
    assert (a.test_acc, a.random_test_acc) == (b.test_acc, b.random_test_acc)
    assert a.test_acc > 0.3  # well above chance (0.1): the scores learned something
    other = learn_supermask(_mlp(), data, _cfg(), method="edge-popup", k=0.3, seed=2)
    assert not all(torch.equal(a.mask[n], other.mask[n]) for n in a.mask)

    rand = random_like(a.mask, 9)
    assert all(int(rand[n].sum()) == int(a.mask[n].sum()) for n in a.mask)
    assert [int(a.mask[n].sum()) for n in a.mask] == [192, 96]  # round(0.3 * 640), round(0.3 * 320)
    assert not all(torch.equal(rand[n], a.mask[n]) for n in a.mask)
    assert all(torch.equal(rand[n], random_like(a.mask, 9)[n]) for n in a.mask)


def test_zhou_same_seed_same_sampled_and_expected_accuracy(data):
    a, b = (learn_supermask(_mlp(), data, _cfg("20it"), method="zhou", k=0.5, seed=4) for _ in range(2))
    assert all(torch.equal(a.mask[n], b.mask[n]) for n in a.mask)
    assert (a.test_acc, a.test_acc_expected) == (b.test_acc, b.test_acc_expected)
    assert a.test_acc_expected is not None


# ------------------------------------------------------------------------------------------ 8. bad options


@pytest.mark.parametrize(
    "options, argument",
    [
        ({"method": "popup"}, "--method"),
        ({"method": "edge-popup", "k": 0}, "--k"),
        ({"method": "edge-popup", "k": 1.5}, "--k"),
        ({"method": "edge-popup", "rescale": True}, "--rescale"),
        ({"method": "zhou", "binary_activations": True}, "--binary-activations"),
        ({"method": "edge-popup", "weights": "kaiming"}, "--weights"),
        ({"method": "biprop", "rescale": True, "weights": "signed-constant"}, "--rescale"),
    ],
)
def test_bad_options_raise_one_line_and_leave_the_model_alone(data, options, argument):
    model = _mlp()
    before = frozen_state(model)
    with pytest.raises(TicketlabError) as err:
        learn_supermask(model, data, _cfg("5it"), **options)
    assert argument in str(err.value) and "\n" not in str(err.value)
    check_frozen(model, before)
    assert all(p.requires_grad for p in model.parameters())


def test_supermask_rejects_names_that_are_not_float_parameters():
    with pytest.raises(TicketlabError, match="prunable weights"):
        Supermask(_mlp(), ["1.weight", "nope.weight"], "zhou")
    with pytest.raises(TicketlabError, match="prunable weights"):
        Supermask(_mlp(), [], "zhou")


# ------------------------------------------------------------------------------------------ 9. zhou rescaling


@pytest.mark.parametrize("training", [True, False])
def test_zhou_rescale_multiplies_kept_weights_by_size_over_kept(training):
    torch.manual_seed(0)
    net = nn.Linear(10, 10)
    scores = torch.full((10, 10), -30.0)  # sigmoid(-30) ~ 1e-13: never drawn
    scores.view(-1)[::5] = 30.0  # sigmoid(30) == 1 in float32: 20 of 100 always kept
    kept = scores > 0
    w = net.weight.detach().clone()
    sm = Supermask(net, ["weight"], "zhou", rescale=True).train(training)
    _set(sm, 0, scores)
    eff = sm.effective_weights()["weight"]
    assert torch.equal(eff[kept], w[kept] * 5.0)  # 100 / 20
    assert bool((eff[~kept] == 0).all())
    plain = Supermask(copy.deepcopy(net), ["weight"], "zhou").train(training)
    _set(plain, 0, scores)
    assert torch.equal(plain.effective_weights()["weight"][kept], w[kept])
