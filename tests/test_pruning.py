import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.pruning import compound, plan_fractions, prune, random_mask


def t(*v):
    return torch.tensor(v)


def test_layerwise_removes_the_smallest_remaining_weights():
    scores = {"a": t(0.1, -0.4, 0.3, 0.2).abs(), "b": t(5.0, 1.0, 3.0, 2.0)}
    mask = {"a": t(True, True, True, True), "b": t(True, False, True, True)}
    new = prune(scores, mask, fraction=0.5, strategy="layerwise", pool=["a", "b"])
    assert new["a"].tolist() == [False, True, True, False]
    # b: 3 alive, round(0.5 * 3) = 2 removed; the pruned 1.0 stays pruned though it is not the smallest
    assert new["b"].tolist() == [True, False, False, False]


def test_global_uses_one_threshold_across_layers():
    scores = {"a": t(0.1, 0.2, 0.3, 0.4), "b": t(5.0, 6.0, 7.0, 8.0)}
    mask = {n: torch.ones(4, dtype=torch.bool) for n in scores}
    new = prune(scores, mask, fraction=0.5, strategy="global", pool=["a", "b"])
    assert new["a"].tolist() == [False] * 4 and new["b"].tolist() == [True] * 4


def test_output_layer_at_its_own_rate_and_ignored_layers_untouched():
    scores = {"h": torch.arange(10.0), "out": torch.arange(10.0), "keep": torch.arange(4.0)}
    mask = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    new = prune(scores, mask, fraction=0.2, strategy="global", pool=["h"], own={"out": 0.1})
    assert int(new["h"].sum()) == 8 and int(new["out"].sum()) == 9 and int(new["keep"].sum()) == 4
    assert not new["out"][0] and not new["h"][:2].any()


def test_masks_only_shrink_even_when_pruned_weights_score_highest():
    scores = {"a": t(100.0, 1.0, 2.0, 3.0)}
    mask = {"a": t(False, True, True, True)}
    new = prune(scores, mask, fraction=0.34, strategy="layerwise", pool=["a"])
    assert M.is_subset(new, mask) and new["a"].tolist() == [False, False, True, True]


def test_exact_counts_over_many_levels_on_a_real_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(37, 29), nn.ReLU(), nn.Linear(29, 7))
    names = M.prunable_names(model)
    assert names == ["0.weight", "2.weight"]  # biases never, unless asked
    pool, own = plan_fractions(names, M.output_layer_name(model), 0.2, 0.1)
    mask = M.full_mask(model, names)
    expected = {n: mask[n].numel() for n in names}
    for _ in range(12):
        scores = {n: torch.randn(mask[n].shape) for n in names}
        new = prune(scores, mask, fraction=0.2, strategy="layerwise", pool=pool, own=own)
        for n, f in [("0.weight", 0.2), ("2.weight", 0.1)]:
            expected[n] -= round(f * expected[n])
            assert int(new[n].sum()) == expected[n]
        assert M.is_subset(new, mask)
        mask = new


def test_prunable_names_biases_and_ignore():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert M.prunable_names(model, prune_biases=True) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert M.prunable_names(model, ignore=["2"]) == ["0.weight"]
    assert M.output_layer_name(model) == "2.weight"


def test_random_mask_keeps_counts_per_pool():
    like = {"a": torch.rand(50) < 0.3, "b": torch.rand(40) < 0.7}
    layerwise = random_mask(like, 3, [["a"], ["b"]])
    assert all(int(layerwise[n].sum()) == int(like[n].sum()) for n in like)
    glob = random_mask(like, 3, [["a", "b"]])
    assert M.count(glob) == M.count(like)
    assert torch.equal(random_mask(like, 3, [["a"], ["b"]])["a"], layerwise["a"])  # seeded


def test_compound_fraction():
    assert abs(compound(0.2, 3) - (1 - 0.8**3)) < 1e-12


def test_mask_save_load_roundtrip_and_apply(tmp_path):
    model = nn.Linear(6, 3)
    mask = {"weight": torch.rand(3, 6) < 0.5}
    M.save_mask(tmp_path / "m.safetensors", mask)
    back = M.load_mask(tmp_path / "m.safetensors")
    assert torch.equal(back["weight"], mask["weight"])
    M.apply_mask(model, back)
    assert bool((model.weight[~mask["weight"]] == 0).all())
    assert M.hamming(mask, back) == 0.0 and M.density(mask) == mask["weight"].float().mean().item()


def test_nan_and_infinite_scores_still_give_the_exact_count():
    scores = {"a": t(float("nan"), float("-inf"), 1.0, 2.0, 0.5, 3.0)}
    mask = {"a": t(True, True, True, True, False, True)}
    new = prune(scores, mask, fraction=0.4, strategy="layerwise", pool=["a"])
    assert int(new["a"].sum()) == 3 and new["a"].tolist() == [False, False, True, True, False, True]


def test_output_bias_goes_at_the_output_rate_when_biases_are_pruned():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    names = M.prunable_names(model, prune_biases=True)
    pool, own = plan_fractions(names, M.output_layer_name(model), 0.2, 0.1)
    assert own == {"2.weight": 0.1, "2.bias": 0.1} and pool == ["0.weight", "0.bias"]
