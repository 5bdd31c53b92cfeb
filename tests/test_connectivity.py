"""Linear mode connectivity: interpolation ends, BatchNorm re-estimation, instability and barrier golden values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ticketlab.analysis.connectivity import (
    STABLE,
    barrier,
    has_batchnorm,
    instability,
    interpolate,
    path_errors,
    reestimate_bn,
)
from ticketlab.data import Dataset, Split, epoch_order
from ticketlab.errors import TicketlabError


def bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def trained_state(seed: int) -> dict[str, torch.Tensor]:
    net = bn_net(seed)
    net.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):  # moves the running statistics and num_batches_tracked away from their defaults
        net(torch.randn(8, 4, generator=g) * 3 + 1)
    return {k: v.clone() for k, v in net.state_dict().items()}


def toy_data(n_train: int = 40, n_test: int = 30) -> Dataset:
    g = torch.Generator().manual_seed(0)
    train = Split(torch.randn(n_train, 4, generator=g) * 2 + 0.5, torch.randint(0, 3, (n_train,), generator=g))
    test = Split(torch.randn(n_test, 4, generator=g), torch.randint(0, 3, (n_test,), generator=g))
    return Dataset("toy", train, test, None, 3)


def test_interpolate_ends_are_bit_for_bit_copies_including_batchnorm_buffers():
    a, b = trained_state(1), trained_state(2)
    for alpha, want in ((0, a), (1, b), (0.0, a), (1.0, b)):
        got = interpolate(a, b, alpha)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype, k
            assert got[k].data_ptr() != want[k].data_ptr()  # a copy, not the same tensor
    assert int(b["1.num_batches_tracked"]) == 3 and not torch.equal(a["1.running_mean"], b["1.running_mean"])


def test_interpolate_midpoint_and_integer_buffers_from_a():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([4.0, -2.0]), "n": torch.tensor(9)}
    mid = interpolate(a, b, 0.25)
    assert torch.equal(mid["w"], torch.tensor([1.0, 1.0]))  # 0.75 * a + 0.25 * b
    assert int(mid["n"]) == 5


def test_interpolate_rejects_mismatched_states():
    a = {"w": torch.zeros(2)}
    with pytest.raises(TicketlabError, match="different entries"):
        interpolate(a, {"v": torch.zeros(2)}, 0.5)
    with pytest.raises(TicketlabError, match="shape"):
        interpolate(a, {"w": torch.zeros(3)}, 0.5)


def test_reestimate_bn_matches_hand_computed_mean_and_variance_and_changes_only_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(2))
    net.eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2.0, 3.0]))
        net[0].running_mean.fill_(7.0)
    params = {k: v.clone() for k, v in net.named_parameters()}
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 4.0], [7.0, 8.0]])
    split = Split(x, torch.zeros(4, dtype=torch.long))
    reestimate_bn(net, split, batch_size=2, batches=2, seed=3)  # one epoch: both batches, whatever the order
    # Batches of 2 rows: the two batch means average to the data's mean; each batch's unbiased variance is
    # (x1 - x2)^2 / 2, averaged over the two batches the seed's order gives.
    order = epoch_order(4, 3, 0)
    pairs = x[order].view(2, 2, 2)
    want_var = ((pairs[:, 0] - pairs[:, 1]) ** 2 / 2).mean(0)
    assert torch.allclose(net[0].running_mean, torch.tensor([4.0, 3.0]))
    assert torch.allclose(net[0].running_var, want_var)
    assert int(net[0].num_batches_tracked) == 2
    assert net[0].momentum == 0.1 and not net.training  # momentum and mode restored
    for k, v in net.named_parameters():
        assert torch.equal(v, params[k]), k


def test_reestimate_bn_is_a_no_op_without_batchnorm():
    net = nn.Sequential(nn.Linear(4, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert not has_batchnorm(net) and has_batchnorm(bn_net(0))
    reestimate_bn(net, toy_data().train, batch_size=8, batches=2, seed=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_path_errors_of_identical_states_is_flat_with_zero_instability_and_restores_the_model():
    net = bn_net(5)
    own = {k: v.clone() for k, v in net.state_dict().items()}
    a = trained_state(1)
    rows = path_errors(net, a, a, toy_data(), points=5, bn_batches=2, batch_size=8)
    assert [r["alpha"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    errors = [r["test_error"] for r in rows]
    assert all(0 <= e <= 1 for e in errors) and len(set(errors)) == 1
    assert instability(errors) == 0.0 and barrier(errors, [r["alpha"] for r in rows]) == 0.0
    assert all(torch.equal(v, own[k]) for k, v in net.state_dict().items())


def test_instability_and_barrier_golden_values():
    errors = [0.10, 0.30, 0.50, 0.20]
    alphas = [0.0, 1 / 3, 2 / 3, 1.0]
    assert instability(errors) == pytest.approx(0.50 - 0.15)
    # line: 0.10, 0.1333, 0.1667, 0.20 -> rises 0, 0.1667, 0.3333, 0
    assert barrier(errors, alphas) == pytest.approx(0.50 - (0.10 / 3 + 0.20 * 2 / 3))
    # a path below its ends: instability and barrier are negative where the mean / line is above every point
    assert instability([0.4, 0.1, 0.2]) == pytest.approx(0.4 - 0.3)
    assert barrier([0.4, 0.1, 0.2], [0.0, 0.5, 1.0]) == pytest.approx(0.0)
    assert STABLE == 0.02
    with pytest.raises(TicketlabError):
        barrier([0.1, 0.2], [0.0])
