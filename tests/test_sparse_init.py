"""Sparse-aware initialisation (issue 17 item 2): each layer's kept weights scaled by 1/sqrt(its density), so He
init's variance 2 / fan_in becomes 2 / (d fan_in) and the ReLU signal no longer decays with depth; the branches that
start from it, and ``ticketlab analyze RUN --signal --sparse-aware``."""

import csv
import math

import pytest
import torch
from conftest import tiny_config
from torch import nn

from ticketlab import branches as B
from ticketlab import masks as M
from ticketlab.analysis.signal import COLUMNS, propagation
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.models import sparse_aware, variance_matched
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors, read_csv


def _exact_mask(shape, keep, seed):
    """A mask keeping exactly ``keep`` entries, at random."""
    flat = torch.zeros(math.prod(shape), dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:keep]] = True
    return flat.view(shape)


def test_kept_weights_have_he_std_over_the_density_and_pruned_ones_are_zero():
    g = torch.Generator().manual_seed(0)
    lin, conv = torch.empty(1000, 1000), torch.empty(64, 32, 3, 3)  # fan_in 1000 and 32 * 9 = 288
    nn.init.kaiming_normal_(lin, nonlinearity="relu", generator=g)
    nn.init.kaiming_normal_(conv, nonlinearity="relu", generator=g)
    state = {"lin": lin, "lin.bias": torch.randn(1000), "conv": conv, "empty": torch.randn(8, 8), "dense": lin[:4]}
    mask = {
        "lin": _exact_mask(lin.shape, 100_000, 1),  # exactly 10%
        "conv": _exact_mask(conv.shape, conv.numel() // 4, 2),  # exactly 25%
        "empty": torch.zeros(8, 8, dtype=torch.bool),
        "dense": torch.ones(4, 1000, dtype=torch.bool),
    }
    out = sparse_aware(state, mask)
    for name, d, fan_in in [("lin", 0.1, 1000), ("conv", 0.25, 288)]:
        kept = out[name][mask[name]]
        n = kept.numel()
        # the sample std of n Gaussian draws is off by about 1/sqrt(2n) relatively: allow 5 of those
        assert kept.std().item() == pytest.approx(math.sqrt(2 / (d * fan_in)), rel=5 / math.sqrt(2 * n)), name
        assert torch.allclose(kept, state[name][mask[name]] / math.sqrt(d), rtol=1e-6, atol=0), name  # x 1/sqrt(d)
        assert torch.count_nonzero(out[name][~mask[name]]) == 0, name  # pruned: exactly zero
        assert M.density({"w": out[name] != 0}) == M.density({"w": mask[name]}), name  # density unchanged
    assert torch.equal(out["lin.bias"], state["lin.bias"])  # outside the mask: as given
    assert torch.equal(out["empty"], torch.zeros(8, 8))  # d = 0: zero, no division by zero
    assert torch.equal(out["dense"], state["dense"])  # d = 1: unchanged
    assert out["lin.bias"] is not state["lin.bias"]  # copies: the caller's state is untouched


def _deep_sparse_mlp(depth=20, width=256, density=0.05, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width, bias=False), nn.ReLU())][:-1])
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    g = torch.Generator().manual_seed(seed + 1)
    mask = {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters()}
    return model, mask


def test_a_deep_sparse_relu_mlp_keeps_its_signal_only_at_sparse_aware_scale():
    torch.set_num_threads(1)
    model, mask = _deep_sparse_mlp()
    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(3))
    plain = [r["variance"] for r in propagation(model, mask, x, y)]
    model.load_state_dict(sparse_aware(model.state_dict(), mask))
    aware = [r["variance"] for r in propagation(model, mask, x, y)]
    assert len(plain) == len(aware) == 20
    assert plain[-1] / plain[0] < 1e-10  # about 0.05^19 = 2e-25: the signal is gone
    assert all(0.5 < q / aware[0] < 2 for q in aware), [q / aware[0] for q in aware]  # flat within a factor 2
    assert aware[0] == pytest.approx(2.0, rel=0.2)  # q0 = sigma_w^2 E[x^2] = 2, as the dense network's


def test_variance_matched_reaches_the_target_for_a_magnitude_mask_where_sparse_aware_overshoots():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(400, 300, generator=g) * (2.0 / 300) ** 0.5  # He init, fan_in 300
    conv = torch.randn(8, 4, 3, 3, generator=g)  # fan_in 4 * 3 * 3 = 36, any scale
    state = {"fc.weight": w, "conv.weight": conv, "fc.bias": torch.ones(400)}
    # magnitude masks: the largest 10% of fc, the largest 25% of conv (ties impossible with Gaussian draws)
    mask = {
        "fc.weight": w.abs() >= w.abs().flatten().kthvalue(w.numel() - 12000 + 1).values,
        "conv.weight": conv.abs() >= conv.abs().flatten().kthvalue(conv.numel() - 72 + 1).values,
    }
    assert int(mask["fc.weight"].sum()) == 12000 and int(mask["conv.weight"].sum()) == 72
    out = variance_matched(state, mask)
    for name, fan_in, d in (("fc.weight", 300, 0.1), ("conv.weight", 36, 0.25)):
        kept = out[name][mask[name]]
        assert float(kept.double().pow(2).mean()) == pytest.approx(2.0 / (d * fan_in), rel=1e-6)  # exactly the target
        assert torch.all(out[name][~mask[name]] == 0)
        ratio = out[name][mask[name]] / state[name][mask[name]]  # one positive factor per layer: signs, order kept
        assert torch.allclose(ratio, ratio[0].expand_as(ratio)) and float(ratio[0]) > 0
    assert torch.equal(out["fc.bias"], state["fc.bias"])
    # sparse_aware's 1/sqrt(d) assumes a random share; the largest 10% of a Gaussian have a mean square ~3x the
    # layer's, so it overshoots the target that much
    over = float(sparse_aware(state, mask)["fc.weight"][mask["fc.weight"]].pow(2).mean()) / (2.0 / (0.1 * 300))
    assert over > 2.5
    empty = variance_matched({"a": torch.randn(3, 3)}, {"a": torch.zeros(3, 3, dtype=torch.bool)})
    assert torch.equal(empty["a"], torch.zeros(3, 3))


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    run = tmp_path_factory.mktemp("trunk")
    cfg = tiny_config(imp={"levels": 1, "rewind": "10it"})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), run, batch_jobs="off")
    return run


def _branch_job(run, prefix, level=1):
    (job,) = [p for p in (run / "replicate_0" / f"level_{level}").glob(prefix + "-*")]
    return load_tensors(job / "init.safetensors"), M.load_mask(job / "mask.safetensors")


@pytest.mark.parametrize(
    "name, given, aware",
    [
        ("random_prune", {}, "random_prune[init=sparse_aware]"),
        ("reinit", {}, "reinit[init=sparse_aware]"),
        ("rewind", {"to": "10it"}, "rewind[init=sparse_aware,to=10it]"),
    ],
)
def test_default_labels_are_unchanged(name, given, aware):
    # the label names the job's directory and its row: runs made before the option exist are found as they are
    assert B.label(name, B.parse_options(name, given)) == ("rewind[to=10it]" if given else name)
    assert B.label(name, B.parse_options(name, {**given, "init": "as_is"})) == ("rewind[to=10it]" if given else name)
    assert B.label(name, B.parse_options(name, {**given, "init": "sparse_aware"})) == aware


def test_random_prune_and_rewind_start_from_the_rescaled_weights(trunk, capsys):
    assert main(["branch", str(trunk), "random_prune", "--init", "sparse_aware", "--device", "cpu"]) == 0
    assert "random_prune[init=sparse_aware]" in {r["branch"] for r in read_csv(trunk / "results.csv")}
    start, mask = _branch_job(trunk, "random_prune")
    rewind = load_tensors(RunDir(trunk).level(0, 0).rewind)
    trunk_random = M.load_mask(RunDir(trunk).job(0, 1, "random_prune").mask)  # --strategy trunk: its own mask
    assert all(torch.equal(mask[n], trunk_random[n]) for n in mask)
    expected = sparse_aware(rewind, mask)
    assert all(torch.equal(start[n], expected[n]) for n in expected)
    assert not torch.equal(start["fc.0.weight"], rewind["fc.0.weight"] * mask["fc.0.weight"])
    # the rewound ticket at sparse-aware scale: rewind to the run's own k
    B.run_branch(trunk, "rewind", options={"to": "10it", "init": "sparse_aware"})
    start, mask = _branch_job(trunk, "rewind")
    ticket = RunDir(trunk).ticket(1)
    expected = sparse_aware(ticket.state, ticket.mask)
    assert all(torch.equal(start[n], expected[n]) for n in expected)


def test_signal_sparse_aware_is_flat_and_leaves_signal_csv_alone(trunk, capsys):
    assert main(["analyze", str(trunk), "--signal", "--sparse-aware", "--device", "cpu"]) == 0
    assert "signal_sparse_aware.csv" in capsys.readouterr().out
    assert not (trunk / "signal.csv").exists()
    with open(trunk / "signal_sparse_aware.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and len(rows) == 3  # three layers of the MLP, level 1
    assert len({r["mean_field"] for r in rows}) == 1  # flat: q_l = q0 for every layer
    assert all(float(r["density"]) < 1 for r in rows)
    assert main(["analyze", str(trunk), "--signal", "--device", "cpu"]) == 0
    plain = read_csv(trunk / "signal.csv")
    assert float(plain[-1]["mean_field"]) < float(rows[-1]["mean_field"])  # the plain prediction decays
    # the same ticket, measured: rescaling raises the last layer's variance by about 1 / (its density x the previous)
    assert float(rows[-1]["variance_ticket"]) > 2 * float(plain[-1]["variance_ticket"])


def test_matched_is_a_branch_option_and_an_unknown_init_is_refused():
    options = B.parse_options("rewind", {"to": "10it", "init": "matched"})
    assert B.label("rewind", options) == "rewind[init=matched,to=10it]"
    with pytest.raises(TicketlabError, match="init"):
        B.parse_options("reinit", {"init": "he"})


@pytest.mark.parametrize("rescale", [sparse_aware, variance_matched])
def test_a_mask_of_another_model_is_refused_in_one_line_not_ignored(rescale):
    state = {"weight": torch.randn(3, 20), "bias": torch.zeros(3)}
    with pytest.raises(TicketlabError, match=r"mask\['weight'\] has shape \(3, 3\)"):
        rescale(state, {"weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(TicketlabError, match="names \\['fc.weight'\\], which the state lacks"):
        rescale(state, {"fc.weight": torch.ones(3, 20, dtype=torch.bool)})


def test_propagation_refuses_a_mask_of_another_shape_in_one_line():
    net = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 20), torch.zeros(16, dtype=torch.long)
    with pytest.raises(TicketlabError, match=r"mask\['0.weight'\] has shape \(8, 3\)"):
        propagation(net, {"0.weight": torch.ones(8, 3, dtype=torch.bool)}, x, y)
