"""Golden tests of every criterion on tiny hand-computed cases, the registry, and the criteria inside IMP."""

import math

import pytest
import torch
from conftest import tiny_config
from test_units import tiny
from torch import nn

from ticketlab import masks as M
from ticketlab import scores as S
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.prunable import prunable_names
from ticketlab.pruning import Group, collapse, dead_outputs, find_units, prune, prune_in_rounds
from ticketlab.rundir import RunDir
from ticketlab.scores import Examples

W0 = {"w": torch.tensor([0.5, -0.1, 0.3, -0.8])}  # at the start of the level
WT = {"w": torch.tensor([0.2, 0.9, -0.4, -1.0])}  # at its end


def keep_two(criterion: str, seed: int = 0, w0=W0, wt=WT) -> list[int]:
    """Indices the criterion keeps when half of the four weights go."""
    full = {"w": torch.ones(4, dtype=torch.bool)}
    mask = prune(S.score(criterion, mask=full, start=w0, end=wt, seed=seed), full, [(("w",), 0.5)])
    return mask["w"].nonzero().flatten().tolist()


@pytest.mark.parametrize(
    "criterion, kept",
    [
        ("large_final", [1, 3]),  # |w_T| = .2 .9 .4 1.0
        ("small_final", [0, 2]),
        ("large_init", [0, 3]),  # |w_0| = .5 .1 .3 .8
        ("small_init", [1, 2]),
        # ranks of |w_0|: 2 0 1 3; of |w_T|: 0 2 1 3; minimum: 0 0 1 3 -> keep 3 and 2
        ("large_init_large_final", [2, 3]),
        ("magnitude_increase", [1, 3]),  # -.3 .8 .1 .2
        ("movement", [1, 2]),  # .3 1.0 .7 .2
        ("large_final_same_sign", [0, 3]),  # same sign: 0 and 3 only
        ("large_final_diff_sign", [1, 2]),  # flipped: 1 and 2
    ],
)
def test_golden_scores(criterion, kept):
    assert keep_two(criterion) == kept


def test_small_init_small_final_golden():
    w0, wt = {"w": torch.tensor([0.1, 0.2, 0.3, 0.4])}, {"w": torch.tensor([0.15, -0.35, 0.25, 0.05])}
    # ranks of -|w_0|: 3 2 1 0; of -|w_T|: 2 0 1 3; minimum: 2 0 1 0 -> keep 0 and 2
    assert keep_two("small_init_small_final", w0=w0, wt=wt) == [0, 2]


def test_random_is_seeded():
    assert keep_two("random", 1) == keep_two("random", 1)
    assert len({tuple(keep_two("random", s)) for s in range(10)}) > 1


def test_excluded_weights_go_first_but_counts_stay_exact():
    # only weight 0 and 3 kept their sign; asking to keep three keeps both plus one excluded weight
    full = {"w": torch.ones(4, dtype=torch.bool)}
    mask = prune(S.score("large_final_same_sign", mask=full, start=W0, end=WT), full, [(("w",), 0.25)])
    assert int(mask["w"].sum()) == 3 and mask["w"][0] and mask["w"][3]


@pytest.mark.parametrize(
    "criterion", ["small_final", "movement", "random", "large_final_diff_sign", "snip", "grasp", "synflow"]
)
def test_criteria_drive_imp_with_exact_shrinking_masks(criterion, tmp_path):
    data = load_dataset("synthetic")
    cfg = tiny_config(prune={"criterion": criterion}, imp={"levels": 2, "baselines": (), "rewind": "5it"})
    run_imp(cfg, registry_problem(cfg, data), tmp_path / criterion)
    default = tiny_config(imp={"levels": 2, "baselines": (), "rewind": "5it"})
    run_imp(default, registry_problem(default, data), tmp_path / "magnitude")

    def masks(path):
        return [M.load_mask(RunDir(path).level(0, lv).mask) for lv in range(3)]

    ours, magnitude = masks(tmp_path / criterion), masks(tmp_path / "magnitude")
    for level in (1, 2):
        assert M.is_subset(ours[level], ours[level - 1])
        assert M.count(ours[level]) == M.count(magnitude[level])  # the same counts per layer...
        assert M.hamming(ours[level], magnitude[level]) > 0  # ...but other weights


# --- scores computed on the network: SNIP, GraSP, SynFlow ---

SIGMA = 1 / (1 + math.exp(-1))  # softmax of logits (3, 2), first entry


def _linear(weight, bias=False) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def _one_example(x=(1.0, 1.0), y=0) -> Examples:
    return Examples((len(x),), lambda: iter([(torch.tensor([x]), torch.tensor([y]))]))


def _full(model):
    return M.full_mask(model, prunable_names(model))


def test_snip_golden():
    # logits W x = (3, 2); dL/dz = p - e_0 = (sigma - 1, 1 - sigma); dL/dW = (p - e_0) x^T with x = (1, 1)
    model = nn.Sequential(_linear([[1.0, 2.0], [3.0, -1.0]]))
    s = S.score("snip", model=model, mask=_full(model), examples=_one_example())["0.weight"]
    a = 1 - SIGMA
    assert torch.allclose(s, torch.tensor([[a, 2 * a], [3 * a, a]]), atol=1e-6)


def test_grasp_golden():
    # Linear model: H = (diag(p) - p p^T) (x) x x^T, so H g = (diag(p) - p p^T)(p - e_0) |x|^2 x^T,
    # = c * (-1, 1)^T (1, 1) with c = 4 sigma (1 - sigma)^2; the score is w * Hg
    model = nn.Sequential(_linear([[1.0, 2.0], [3.0, -1.0]]))
    s = S.score("grasp", model=model, mask=_full(model), examples=_one_example())["0.weight"]
    c = 4 * SIGMA * (1 - SIGMA) ** 2
    assert torch.allclose(s, torch.tensor([[-c, -2 * c], [3 * c, -c]]), atol=1e-6)


def test_synflow_golden_and_reads_no_data():
    # R = sum_i |W2_i| sum_j |W1_ij|: score of W1_ij = |W1_ij| |W2_i|, of W2_i = |W2_i| sum_j |W1_ij|
    model = nn.Sequential(_linear([[1.0, -2.0], [3.0, 4.0]]), nn.ReLU(), _linear([[2.0, -1.0]]))

    def no_data():
        raise AssertionError("SynFlow read the data")

    scores = S.score("synflow", model=model, mask=_full(model), examples=Examples((2,), no_data))
    assert scores["0.weight"].tolist() == [[2.0, 4.0], [3.0, 4.0]]
    assert scores["2.weight"].tolist() == [[6.0, 7.0]]
    # a pruned weight carries no flow, and what flowed through it is gone from the others' scores
    mask = {"0.weight": torch.tensor([[True, False], [True, True]]), "2.weight": torch.ones(1, 2, dtype=torch.bool)}
    scores = S.score("synflow", model=model, mask=mask, examples=Examples((2,), no_data))
    assert scores["0.weight"].tolist() == [[2.0, 0.0], [3.0, 4.0]] and scores["2.weight"].tolist() == [[2.0, 7.0]]


def test_synflow_on_token_inputs_flows_from_every_row_of_an_embedding():
    """An all-ones input is every token at once: each position of the embedding carries its table's column sums.
    R = sum_d |W_d| * 3 * sum_t |E_td| (3 positions, summed): score of E_td = 3 |W_d| |E_td|."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(4, 2), nn.Linear(2, 1, bias=False)
            with torch.no_grad():
                self.emb.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.0], [2.0, 3.0]]))
                self.fc.weight.copy_(torch.tensor([[2.0, -1.0]]))

        def forward(self, x):
            return self.fc(self.emb(x).sum(1))

    model = Tokens()
    examples = Examples((3,), lambda: iter(()), tokens=True)
    scores = S.score("synflow", model=model, mask=_full_of(model, ["emb.weight", "fc.weight"]), examples=examples)
    assert scores["emb.weight"].tolist() == [[6.0, 6.0], [3.0, 3.0], [6.0, 0.0], [12.0, 9.0]]
    assert scores["fc.weight"].tolist() == [[2.0 * 3 * 4.5, 1.0 * 3 * 6.0]]


def _full_of(model, names):
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


@pytest.mark.parametrize("criterion", ["snip", "grasp", "synflow"])
def test_scoring_leaves_the_model_and_its_batchnorm_statistics_as_they_were(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model(torch.randn(64, 4))  # non-trivial running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    examples = Examples((4,), lambda: iter([(x, y)]))
    a = S.score(criterion, model=model, mask=_full(model), examples=examples)
    b = S.score(criterion, model=model, mask=_full(model), examples=examples)
    assert model.training  # the caller's mode is kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a[n], b[n]) for n in a)  # eval mode: no dropout, the same scores twice
    assert all(p.grad is None for p in model.parameters())


def test_at_init_refuses_criteria_that_need_training():
    model = nn.Sequential(_linear([[1.0, 2.0], [3.0, -1.0]]))
    with pytest.raises(TicketlabError, match="same at initialisation"):
        S.score("movement", model=model, mask=_full(model), examples=_one_example())
    # magnitude at init is large_final with w_T = w_0
    s = S.score("large_final", model=model, mask=_full(model), examples=_one_example())["0.weight"]
    assert s.tolist() == [[1.0, 2.0], [3.0, 1.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_snip_collapses_a_layer_at_999_sparsity_and_synflow_keeps_every_layer_connected(seed):
    from ticketlab.models import create_model, initialize

    model = initialize(create_model("lenet_300_100", (1, 28, 28), 10), "glorot_normal", seed)
    names = prunable_names(model)
    full = M.full_mask(model, names)
    g = torch.Generator().manual_seed(seed)
    batch = (torch.randn(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g))
    examples = Examples((1, 28, 28), lambda: iter([batch]))
    groups = [Group(tuple(names), 0.999)]  # global: one threshold over the three layers
    masks = {
        c: prune_in_rounds(lambda m, c=c: S.score(c, model=model, mask=m, examples=examples), full, groups, rounds)
        for c, rounds in (("snip", 1), ("synflow", 100))
    }
    for mask in masks.values():
        assert M.count(mask) == M.size(full) - round(0.999 * M.size(full))
    assert "fc.0.weight has no weight left" in collapse(model, masks["snip"], torch.ones(1, 1, 28, 28))
    assert collapse(model, masks["synflow"], torch.ones(1, 1, 28, 28)) == []
    assert dead_outputs(model, masks["synflow"], torch.ones(1, 1, 28, 28)) == (0, 10)


def test_synflow_on_a_deep_resnet_ranks_scores_beyond_float32_without_collapse():
    from ticketlab.models import create_model, initialize

    model = initialize(create_model("resnet56", (3, 8, 8), 10, width=0.25), "kaiming_normal", 0)
    names = prunable_names(model)
    full = M.full_mask(model, names)
    scores = S.score("synflow", model=model, mask=full, examples=Examples((3, 8, 8), lambda: iter(())))
    assert max(float(s.max()) for s in scores.values()) > torch.finfo(torch.float32).max  # the flow of 56 layers
    examples = Examples((3, 8, 8), lambda: iter(()))
    mask = prune_in_rounds(
        lambda m: S.score("synflow", model=model, mask=m, examples=examples), full, [Group(tuple(names), 0.9)], 10
    )
    # ranked in float32, every score overflowed to inf and the first five conv layers were emptied
    example = torch.ones(1, 3, 8, 8)
    assert collapse(model, mask, example) == [] and dead_outputs(model, mask, example) == (0, 10)


# --- scores of whole neurons and filters, for structured pruning ---


def test_unit_scores_golden():
    model = tiny(norm=True)
    units = find_units(model, (3,))
    mask = {"0.weight": torch.tensor([[True, True, False], [True, True, True]])}
    l1 = S.score("l1", model=model, mask=mask, units=units)["0"]
    l2 = S.score("l2", model=model, mask=mask, units=units)["0"]
    assert torch.equal(l1, torch.tensor([3.0, 7.0]))  # |1| + |-2| (the 2 is pruned); |3| + |-4|
    assert torch.allclose(l2, torch.tensor([math.sqrt(5.0), 5.0]))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([-0.5, 2.0]))
    assert torch.equal(S.score("bn", model=model, mask=mask, units=units)["0"], torch.tensor([0.5, 2.0]))
    with pytest.raises(TicketlabError, match="no BatchNorm"):
        S.score("bn", model=tiny(), mask={}, units=find_units(tiny(), (3,)))
    with pytest.raises(TicketlabError, match="unknown unit score"):
        S.score("taylor", model=model, mask=mask, units=units)


# --- the registry ---


@pytest.mark.parametrize("name", S.names())
def test_every_registered_criterion_scores_each_weight_and_prunes_to_the_exact_count(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    full = _full(model)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    end = {n: p + 0.1 * torch.randn_like(p) for n, p in start.items()}
    scores = S.score(
        name, model=model, mask=full, examples=Examples((4,), lambda: iter([(x, y)])), start=start, end=end
    )
    assert {n: s.shape for n, s in scores.items()} == {n: m.shape for n, m in full.items()}
    mask = prune(scores, full, [(tuple(full), 0.5)])
    assert M.count(mask) == M.size(full) // 2


def test_the_registry_records_what_each_criterion_needs():
    assert S.names()[:2] == ["large_final", "small_final"] and S.names()[-3:] == ["snip", "grasp", "synflow"]
    assert S.names(units=True) == ["l1", "l2", "bn"]
    assert [n for n in S.names() if S.get(n).at_init_default] == ["snip", "grasp", "synflow"]
    assert [n for n in S.names() if S.get(n).rounds != 1] == ["synflow"] and S.get("synflow").rounds == 100
    trained = ["magnitude_increase", "movement", "large_final_same_sign", "large_final_diff_sign"]
    assert [n for n in S.names() if S.get(n).needs_training] == trained
    with pytest.raises(TicketlabError, match="same at initialisation"):
        S.get("movement", at_init=True)


def test_unknown_names_are_user_errors_that_list_the_known_ones():
    with pytest.raises(TicketlabError, match="unknown criterion 'magnitude'; known: large_final, small_final"):
        S.get("magnitude")
    with pytest.raises(TicketlabError, match="unknown criterion 'l1'"):  # a unit score does not score weights
        S.get("l1")
    with pytest.raises(TicketlabError, match="unknown unit score 'snip'; known: l1, l2, bn"):
        S.get("snip", units=True)


def test_a_new_criterion_is_one_decorated_function(monkeypatch):
    monkeypatch.setattr(S, "_REGISTRY", dict(S._REGISTRY))  # registered for this test only

    @S.criterion(needs="ends", rounds=3)
    def smallest_change(start, end, names, seed):
        return {n: -(end[n] - start[n]).abs() for n in names}

    assert S.names()[-1] == "smallest_change" and S.get("smallest_change").rounds == 3
    full = {"w": torch.ones(4, dtype=torch.bool)}
    mask = prune(S.score("smallest_change", mask=full, start=W0, end=WT), full, [(("w",), 0.5)])
    assert mask["w"].nonzero().flatten().tolist() == [0, 3]  # |w_T - w_0| = .3 1.0 .7 .2
