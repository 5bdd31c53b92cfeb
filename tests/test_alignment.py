"""What tickets share: each measure on golden 4-element tensors computed by hand, and its defining invariants."""

import math

import pytest
import torch
from conftest import tiny_config

from ticketlab.analysis.alignment import (
    gradient_alignment,
    gradient_at,
    gradient_support,
    jaccard,
    jaccard_per_layer,
    mean_abs_gradients,
    sign_preservation,
    trajectory_alignment,
    trajectory_alignment_per_layer,
)
from ticketlab.data import batches, load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.training.objectives import CLASSIFICATION

T = torch.tensor
B = lambda *v: torch.tensor(v, dtype=torch.bool)  # noqa: E731


def test_sign_preservation_golden():
    start = {"a": T([1.0, -2.0, 0.0, 3.0]), "b": T([-1.0, 1.0, 1.0, 1.0])}
    final = {"a": T([2.0, 1.0, 5.0, 0.0]), "b": T([-3.0, -1.0, 2.0, 4.0])}
    # all: a counts 1, -2, 3 (0 at start is not counted): kept sign 1 of 3; b: -1, 1 (to -1: flipped), 1, 1 -> 3 of 4
    assert sign_preservation(start, final) == pytest.approx(4 / 7)
    mask = {"a": B(True, True, True, False), "b": B(False, False, True, True)}
    # a: 1 kept, -2 flipped, 0 not counted; b: both kept -> 3 of 4
    assert sign_preservation(start, final, mask) == pytest.approx(3 / 4)
    # a weight ending at exactly 0 lost its sign (a[3] under the full mask above); nothing counted: nan
    assert math.isnan(sign_preservation({"a": T([0.0, 0.0])}, {"a": T([1.0, 1.0])}))


def test_sign_preservation_is_one_unchanged_and_zero_flipped():
    start = {"w": torch.randn(5, 4, generator=torch.Generator().manual_seed(0))}
    mask = {"w": torch.rand(5, 4, generator=torch.Generator().manual_seed(1)) > 0.5}
    assert sign_preservation(start, start, mask) == 1.0
    assert sign_preservation(start, {"w": -start["w"]}, mask) == 0.0
    assert sign_preservation(start, {"w": 3 * start["w"]}) == 1.0


def test_jaccard_golden_and_itself():
    a = {"x": B(True, True, False, False), "y": B(True, False, False, False)}
    b = {"x": B(True, False, True, False), "y": B(False, False, False, False)}
    # x: inter 1, union 3; y: inter 0, union 1; overall 1 / 4
    assert jaccard_per_layer(a, b) == pytest.approx({"x": 1 / 3, "y": 0.0})
    assert jaccard(a, b) == pytest.approx(1 / 4)
    assert jaccard(a, a) == 1.0 and set(jaccard_per_layer(a, a).values()) == {1.0}
    empty = {"x": B(False, False)}
    assert jaccard(empty, empty) == 1.0 and jaccard_per_layer(empty, empty) == {"x": 1.0}
    with pytest.raises(TicketlabError, match="missing"):
        jaccard(a, {"x": a["x"]})


def test_gradient_support_golden_global_and_ties_first():
    g = {"a": T([0.1, 0.5, 0.3, 0.5]), "b": T([0.2, 0.9, 0.0, 0.3])}
    top3 = gradient_support(g, 3)
    assert torch.equal(top3["a"], B(False, True, False, True)) and torch.equal(top3["b"], B(False, True, False, False))
    # 4th place: a tie at 0.3 between a[2] and b[3]: the first one (a, then row-major) wins
    top4 = gradient_support(g, 4)
    assert torch.equal(top4["a"], B(False, True, True, True)) and torch.equal(top4["b"], B(False, True, False, False))
    assert not any(m.any() for m in gradient_support(g, 0).values())
    with pytest.raises(TicketlabError, match="count 9"):
        gradient_support(g, 9)


def test_gradient_alignment_golden():
    g = {"a": T([0.1, 0.5, 0.3, 0.5]), "b": T([0.2, 0.9, 0.0, 0.3])}
    mask = {"a": B(True, True, False, False), "b": B(False, True, False, False)}
    # support of 3: a[1], a[3], b[1]; the mask: a[0], a[1], b[1] -> inter 2, union 4
    assert gradient_alignment(g, mask) == pytest.approx(0.5)
    same = gradient_support(g, 3)
    assert gradient_alignment(g, same) == 1.0


def test_trajectory_alignment_golden_and_full_mask():
    g = {"a": T([1.0, -2.0, 0.0, 2.0]), "b": T([3.0, 0.0, 0.0, 1.0])}
    mask = {"a": B(True, True, False, False), "b": B(False, False, False, True)}
    # energy: a 1 + 4 + 4 = 9, b 9 + 1 = 10; inside: a 1 + 4 = 5, b 1
    assert trajectory_alignment(g, mask) == pytest.approx(6 / 19)
    assert trajectory_alignment_per_layer(g, mask) == pytest.approx({"a": 5 / 9, "b": 1 / 10})
    full = {n: torch.ones(4, dtype=torch.bool) for n in g}
    assert trajectory_alignment(g, full) == pytest.approx(1.0)
    assert math.isnan(trajectory_alignment({"a": torch.zeros(4)}, {"a": full["a"]}))


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    data = load_dataset("synthetic")
    torch.manual_seed(0)
    model = create_model("mlp", data.input_shape, data.num_classes, widths=(8, 6))
    names = [n for n, p in model.named_parameters() if n.endswith("weight")]
    mask = {n: torch.rand_like(p) > 0.5 for n, p in model.named_parameters() if n in names}
    return cfg, data, model, mask


def test_gradients_are_the_mean_over_the_training_batches_without_a_step(setup):
    cfg, data, model, mask = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean_abs = mean_abs_gradients(model, data, cfg.train, mask=mask, data_seed=7, start=3, iterations=2)
    mean = gradient_at(model, data, cfg.train, mask=mask, data_seed=7, start=3, iterations=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    # by hand: the gradients of the masked network on the two batches training sees at iterations 3 and 4
    net = create_model("mlp", data.input_shape, data.num_classes, widths=(8, 6))
    net.load_state_dict(before)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in mask:
                p.mul_(mask[n])
    per_batch = []
    for _, x, y in batches(data.train, cfg.train.batch_size, 7, 3, 5, augment=data.augment):
        net.zero_grad()
        CLASSIFICATION.loss(net(x), y).backward()
        per_batch.append({n: p.grad * mask[n] for n, p in net.named_parameters() if n in mask})
    for n in mask:
        assert torch.allclose(mean_abs[n], (per_batch[0][n].abs() + per_batch[1][n].abs()) / 2, atol=1e-7)
        assert torch.allclose(mean[n], (per_batch[0][n] + per_batch[1][n]) / 2, atol=1e-7)
        assert not bool(mean_abs[n][~mask[n]].any())  # pruned weights: no gradient
    with pytest.raises(TicketlabError, match="at least 1"):
        mean_abs_gradients(model, data, cfg.train, mask=mask, data_seed=7, start=0, iterations=0)
