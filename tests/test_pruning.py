"""Allocation (how many each layer keeps), exact top-k (which), and layer collapse."""

import math

import pytest
import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.prunable import layer_kinds, output_layer_name, prunable_names
from ticketlab.pruning import (
    Group,
    at_level,
    collapse,
    compound,
    dead_outputs,
    erk_densities,
    on_ladder,
    one_shot_groups,
    plan_groups,
    prune,
    prune_in_rounds,
    random_mask,
)


def t(*v):
    return torch.tensor(v)


def test_layerwise_removes_the_smallest_remaining_weights():
    scores = {"a": t(0.1, -0.4, 0.3, 0.2).abs(), "b": t(5.0, 1.0, 3.0, 2.0)}
    mask = {"a": t(True, True, True, True), "b": t(True, False, True, True)}
    new = prune(scores, mask, [(("a",), 0.5), (("b",), 0.5)])
    assert new["a"].tolist() == [False, True, True, False]
    # b: 3 alive, round(0.5 * 3) = 2 removed; the pruned 1.0 stays pruned though it is not the smallest
    assert new["b"].tolist() == [True, False, False, False]


def test_global_uses_one_threshold_across_layers():
    scores = {"a": t(0.1, 0.2, 0.3, 0.4), "b": t(5.0, 6.0, 7.0, 8.0)}
    mask = {n: torch.ones(4, dtype=torch.bool) for n in scores}
    new = prune(scores, mask, [(("a", "b"), 0.5)])
    assert new["a"].tolist() == [False] * 4 and new["b"].tolist() == [True] * 4


def test_output_layer_at_its_own_rate_and_ignored_layers_untouched():
    scores = {"h": torch.arange(10.0), "out": torch.arange(10.0), "keep": torch.arange(4.0)}
    mask = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    new = prune(scores, mask, [(("h",), 0.2), (("out",), 0.1)])
    assert int(new["h"].sum()) == 8 and int(new["out"].sum()) == 9 and int(new["keep"].sum()) == 4
    assert not new["out"][0] and not new["h"][:2].any()


def test_masks_only_shrink_even_when_pruned_weights_score_highest():
    scores = {"a": t(100.0, 1.0, 2.0, 3.0)}
    mask = {"a": t(False, True, True, True)}
    new = prune(scores, mask, [(("a",), 0.34)])
    assert M.is_subset(new, mask) and new["a"].tolist() == [False, False, True, True]


def test_exact_counts_over_many_levels_on_a_real_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(37, 29), nn.ReLU(), nn.Linear(29, 7))
    names = prunable_names(model)
    assert names == ["0.weight", "2.weight"]  # biases never, unless asked
    groups = _groups(model, names, "layerwise", 0.2, output_fraction=0.1)
    mask = M.full_mask(model, names)
    expected = {n: mask[n].numel() for n in names}
    for _ in range(12):
        scores = {n: torch.randn(mask[n].shape) for n in names}
        new = prune(scores, mask, groups)
        for n, f in [("0.weight", 0.2), ("2.weight", 0.1)]:
            expected[n] -= round(f * expected[n])
            assert int(new[n].sum()) == expected[n]
        assert M.is_subset(new, mask)
        mask = new


def test_random_mask_keeps_counts_per_pool():
    like = {"a": torch.rand(50) < 0.3, "b": torch.rand(40) < 0.7}
    layerwise = random_mask(like, 3, [["a"], ["b"]])
    assert all(int(layerwise[n].sum()) == int(like[n].sum()) for n in like)
    glob = random_mask(like, 3, [["a", "b"]])
    assert M.count(glob) == M.count(like)
    assert torch.equal(random_mask(like, 3, [["a"], ["b"]])["a"], layerwise["a"])  # seeded


def test_compound_fraction():
    assert abs(compound(0.2, 3) - (1 - 0.8**3)) < 1e-12


def test_nan_and_infinite_scores_still_give_the_exact_count():
    scores = {"a": t(float("nan"), float("-inf"), 1.0, 2.0, 0.5, 3.0)}
    mask = {"a": t(True, True, True, True, False, True)}
    new = prune(scores, mask, [(("a",), 0.4)])
    assert int(new["a"].sum()) == 3 and new["a"].tolist() == [False, False, True, True, False, True]


def test_output_bias_goes_at_the_output_rate_when_biases_are_pruned():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    names = prunable_names(model, prune_biases=True)
    groups = _groups(model, names, "global", 0.2, output_fraction=0.1)
    assert groups == [(("0.weight", "0.bias"), 0.2), (("2.weight",), 0.1), (("2.bias",), 0.1)]


def _example(model):
    """A batch of inputs for a Sequential starting with a Linear, or with a Conv2d (the image size that fits)."""
    first = model[0]
    if isinstance(first, nn.Linear):
        return torch.randn(2, first.in_features)
    for side in range(3, 33):
        x = torch.randn(2, first.in_channels, side, side)
        try:
            model(x)
            return x
        except RuntimeError:
            pass
    raise AssertionError("no image size fits the model")


def _groups(model, names, strategy, fraction, **rates):
    kinds, out = layer_kinds(model), output_layer_name(model, _example(model))
    groups = plan_groups(names, kinds=kinds, output_name=out, strategy=strategy, fraction=fraction, **rates)
    assert not any(g.erk for g in groups) or strategy == "erk"
    return [tuple(g[:2]) for g in groups] if strategy != "erk" else groups


def test_conv_fc_and_output_layers_at_their_own_rates():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 8), nn.Linear(8, 3))
    names = prunable_names(model)
    layerwise = _groups(model, names, "layerwise", 0.2, conv_fraction=0.15, output_fraction=0.1)
    assert layerwise == [(("0.weight",), 0.15), (("1.weight",), 0.15), (("3.weight",), 0.2), (("4.weight",), 0.1)]
    mask = M.full_mask(model, names)
    new = prune({n: torch.randn(m.shape) for n, m in mask.items()}, mask, layerwise)
    assert [int(new[n].sum()) for n in names] == [36 - 5, 144 - 22, 128 - 26, 24 - 2]
    # global: the convs share a threshold, the fc layers theirs, the output layer stays alone
    glob = _groups(model, names, "global", 0.2, conv_fraction=0.15, output_fraction=0.1)
    assert glob == [(("0.weight", "1.weight"), 0.15), (("3.weight",), 0.2), (("4.weight",), 0.1)]
    # unset rates fall back to --fraction: everything under one threshold
    assert _groups(model, names, "global", 0.2) == [(tuple(names), 0.2)]


def test_one_shot_to_a_target_density_overall_split_as_iterative_pruning_splits_it():
    sizes = {"conv": 1000, "fc": 9000, "out": 100}
    same = one_shot_groups([(("conv",), 0.2), (("fc",), 0.2)], sizes, 0.1)
    assert [tuple(g[:2]) for g in same] == [(("conv",), 0.9), (("fc",), 0.9)]  # one rate: exactly 1 - target
    # conv 10%, fc 20%, output 10% per level; and a case where no group uses --fraction at all
    for groups in ([(("conv",), 0.1), (("fc",), 0.2), (("out",), 0.1)], [(("conv",), 0.1), (("out",), 0.1)]):
        got = one_shot_groups(groups, sizes, 0.05)
        kept = sum(sum(sizes[n] for n in g) * (1 - f) for g, f, *_ in got)
        assert abs(kept / sum(sum(sizes[n] for n in g) for g, _ in groups) - 0.05) < 1e-9
        # the same number of levels L for every group: (1 - f_new) = (1 - f) ** L
        levels = [math.log(1 - f_new) / math.log(1 - f) for (_, f_new, *_), (_, f) in zip(got, groups)]
        assert max(levels) - min(levels) < 1e-9


def test_erk_densities_follow_the_formula_and_hit_the_overall_density():
    shapes = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "fc": (10, 16)}
    sizes = {n: math.prod(s) for n, s in shapes.items()}  # 432, 4608, 160
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}  # (n_out + n_in + k_h + k_w) / (n_out n_in k_h k_w)
    for d in (0.05, 0.3):
        dens = erk_densities(shapes, d)
        assert abs(sum(dens[n] * sizes[n] for n in shapes) / 5200 - d) < 1e-12
    # at 5%: eps = 0.05 * 5200 / (25 + 54 + 26), every layer below 1 and proportional to its raw density
    dens = erk_densities(shapes, 0.05)
    assert all(abs(dens[n] - raw[n] * 260 / 105) < 1e-12 for n in shapes)
    # at 30% the fc layer (2.41 > 1), then conv1 (1.03 > 1 after re-solving) are made dense; conv2 takes the rest
    dens = erk_densities(shapes, 0.3)
    assert dens["fc"] == 1.0 and dens["conv1"] == 1.0
    assert abs(dens["conv2"] - (1560 - 160 - 432) / 4608) < 1e-12
    assert erk_densities(shapes, 1.0) == {n: 1.0 for n in shapes}


def test_erk_group_prunes_each_layer_to_its_exact_count_and_compounds_over_levels():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 20), nn.Linear(20, 5))
    names = prunable_names(model)
    groups = _groups(model, names, "erk", 0.5, output_fraction=0.2)
    assert [(g.members, g.erk) for g in groups] == [(("0.weight", "2.weight"), True), (("3.weight",), False)]
    mask = M.full_mask(model, names)
    shapes = {n: tuple(mask[n].shape) for n in ("0.weight", "2.weight")}
    for level in (1, 2, 3):
        new = prune({n: torch.randn(m.shape) for n, m in mask.items()}, mask, at_level(groups, level))
        dens = erk_densities(shapes, 0.5**level)
        for n in shapes:
            assert int(new[n].sum()) == round(dens[n] * new[n].numel())
        assert M.is_subset(new, mask)
        mask = new
    assert int(mask["3.weight"].sum()) == 100 - 20 - 16 - 13  # the output layer: 20% of what is left per level


def test_per_layer_overrides_and_dense_layers():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10), nn.Linear(10, 4))
    names = prunable_names(model)
    groups = _groups(model, names, "global", 0.5, overrides={"0.weight": 0.0, "2.weight": 0.25})
    assert groups == [(("0.weight",), 0.0), (("1.weight",), 0.5), (("2.weight",), 0.25)]
    new = prune(
        {n: torch.randn(m.shape) for n, m in M.full_mask(model, names).items()},
        M.full_mask(model, names),
        [Group(g, f) for g, f in groups],
    )
    assert [int(new[n].sum()) for n in names] == [100, 50, 30]
    with pytest.raises(TicketlabError, match="not prunable"):
        _groups(model, names, "layerwise", 0.5, overrides={"fc.weight": 0.1})
    # a target below what the dense layers already hold cannot be reached
    with pytest.raises(TicketlabError, match="cannot be reached"):
        one_shot_groups([Group(("0.weight",), 0.0), Group(("1.weight",), 0.5)], {"0.weight": 100, "1.weight": 100}, 0.4)


def test_rounds_reach_the_exact_count_on_an_exponential_schedule_rescoring_each_time():
    mask = {"a": torch.ones(1000, dtype=torch.bool), "b": torch.ones(100, dtype=torch.bool)}
    seen = []

    def score(current):
        seen.append({n: int(m.sum()) for n, m in current.items()})
        return {n: torch.rand(m.shape) for n, m in current.items()}

    new = prune_in_rounds(score, mask, [Group(("a",), 0.99), Group(("b",), 0.5)], 10)
    assert int(new["a"].sum()) == 10 and int(new["b"].sum()) == 50
    assert len(seen) == 10 and seen[0] == {"a": 1000, "b": 100}
    # after round r: 1000 * 0.01 ** (r / 10) kept, so round 5 scores 1000 * 0.1 = 100 weights of a
    assert seen[5]["a"] == 100 and all(x["a"] > y["a"] for x, y in zip(seen, seen[1:]))


def test_collapse_detects_an_emptied_layer_and_a_cut_path():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    names = prunable_names(model)
    mask = M.full_mask(model, names)
    assert collapse(model, mask, torch.ones(1, 4)) == []
    # hidden unit 0 of layer 3 has no input, and the output layer reads only unit 0: cut, though no layer is empty
    cut = dict(mask, **{"3.weight": torch.tensor([[False] * 3, [True] * 3, [True] * 3])})
    cut["5.weight"] = torch.tensor([[True, False, False], [True, False, False]])
    assert collapse(model, cut, torch.ones(1, 4)) == ["no path from the input reaches any output"]
    assert dead_outputs(model, cut, torch.ones(1, 4)) == (2, 2)
    # one output reachable: one dead, which is not collapse
    cut["5.weight"] = torch.tensor([[True, False, False], [False, True, False]])
    assert dead_outputs(model, cut, torch.ones(1, 4)) == (1, 2) and collapse(model, cut, torch.ones(1, 4)) == []
    empty = dict(mask, **{"0.weight": torch.zeros(3, 4, dtype=torch.bool)})
    assert collapse(model, empty, torch.ones(1, 4))[0] == "0.weight has no weight left"
    assert "0.weight" in M.density_table(empty) and "0.0000%" in M.density_table(empty)
    # a bias (with --prune-biases) or a norm parameter emptied is no collapse: the weights still connect
    biases = dict(mask, **{"5.bias": torch.zeros(2, dtype=torch.bool), "1.weight": torch.zeros(3, dtype=torch.bool)})
    assert collapse(model, biases, torch.ones(1, 4)) == []


def test_collapse_sees_paths_through_residual_connections():
    from ticketlab.models import create_model

    model = create_model("resnet20", (3, 8, 8), 10, width=0.25)
    mask = M.full_mask(model, prunable_names(model))
    # emptying one block's conv leaves its identity shortcut: a layer collapses, the outputs stay connected
    mask["blocks.1.conv2.weight"] = torch.zeros_like(mask["blocks.1.conv2.weight"])
    assert collapse(model, mask, torch.ones(1, 3, 8, 8)) == ["blocks.1.conv2.weight has no weight left"]
    mask["conv.weight"] = torch.zeros_like(mask["conv.weight"])  # the stem: nothing gets in
    assert "no path from the input reaches any output" in collapse(model, mask, torch.ones(1, 3, 8, 8))


def test_iterative_counts_follow_the_exact_ladder_even_on_tiny_layers():
    """Level L keeps round(n * (1 - f)^L) of a layer's n weights; one level's cut rounded on its own stalls."""
    mask = {"out.weight": torch.ones(2, 3, dtype=torch.bool)}
    ladder, per_level = dict(mask), dict(mask)
    for level in range(1, 12):
        scores = {"out.weight": torch.randn(2, 3)}
        ladder = prune(scores, ladder, on_ladder([Group(("out.weight",), 0.1)], level, {"out.weight": 6}))
        per_level = prune(scores, per_level, [Group(("out.weight",), 0.1)])
        assert int(ladder["out.weight"].sum()) == round(6 * 0.9**level)
    assert int(ladder["out.weight"].sum()) == 2  # round(6 * 0.9^11) = round(1.88)
    assert int(per_level["out.weight"].sum()) == 5  # the old per-level rounding: round(0.1 * 6) = 1, then 0s


def test_lenet_300_100_still_reaches_21_1_percent_at_level_7():
    model = create_model("lenet_300_100", (1, 28, 28), 10)
    names = prunable_names(model)
    out = output_layer_name(model, torch.randn(2, 1, 28, 28), names)
    groups = plan_groups(names, kinds=layer_kinds(model), output_name=out, strategy="layerwise", fraction=0.2,
                         output_fraction=0.1)  # fmt: skip
    mask = M.full_mask(model, names)
    origin = {n: m.numel() for n, m in mask.items()}
    for level in range(1, 8):
        mask = prune({n: torch.randn(m.shape) for n, m in mask.items()}, mask, on_ladder(groups, level, origin))
    assert f"{M.density(mask):.1%}" == "21.1%"
    assert [int(m.sum()) for m in mask.values()] == [
        round(235200 * 0.8**7),
        round(30000 * 0.8**7),
        round(1000 * 0.9**7),
    ]
