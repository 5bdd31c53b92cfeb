import re
import types

import pytest
import torch
from conftest import tiny_config
from torch import nn

from ticketlab import find_ticket
from ticketlab import masks as M
from ticketlab.cli import build_parser
from ticketlab.cli_flags import config_from_args
from ticketlab.components import component_table, components, shows_components
from ticketlab.config import ModelConfig
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.models import INIT_SCHEMES, create_model, initialize, model_arguments, model_names, norm_layer
from ticketlab.problem import registry_problem
from ticketlab.prunable import layer_kinds, prunable_names
from ticketlab.report.html import component_panel
from ticketlab.rundir import RunDir

V, T = 11, 6
TINY = {
    "transformer_lm": dict(d_model=16, heads=2, layers=1),
    "transformer_classifier": dict(vocab=V, d_model=16, heads=2, layers=1),
    "rnn_classifier": dict(vocab=V, hidden=8, embed=4),
    "rnn_lm": dict(hidden=8, embed=4),
}


def test_every_sequence_model_in_the_registry_is_tested_here():
    assert sorted(n for n in model_names() if "vocab" in model_arguments(n)) == sorted(TINY)


def tokens(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


def tiny(name: str, **kw) -> nn.Module:
    return initialize(create_model(name, (T,), V, **{**TINY[name], **kw}), "default", 0)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("transformer_lm", {}),
        ("transformer_lm", {"positions": "sinusoidal"}),
        ("rnn_lm", {}),
        ("rnn_lm", {"cell": "gru"}),
    ],
)
def test_language_models_are_causal(name, kw):
    model = tiny(name, **kw).eval()
    x = tokens()
    y = x.clone()
    y[:, 3] = (y[:, 3] + 1) % V  # change the token at position 3 only
    a, b = model(x), model(y)
    assert a.shape == (3, T, V)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6, rtol=0)  # earlier positions cannot see the change
    assert not torch.allclose(a[:, 3], b[:, 3])  # the changed position itself does


def test_sinusoidal_positions_are_a_buffer_not_a_parameter():
    model = tiny("transformer_lm", positions="sinusoidal")
    assert not any("pos" in n for n, _ in model.named_parameters())
    table = model.sinusoids
    assert table.shape == (T, 16) and table[0, 0] == 0 and table[0, 1] == 1  # sin(0), cos(0)
    assert torch.isclose(table[1, 0], torch.sin(torch.tensor(1.0)))


@pytest.mark.parametrize("name", sorted(TINY))
def test_integer_tokens_reach_the_embedding_as_int64(name):
    model = tiny(name)
    seen = []
    model.inputs.embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    model(tokens())
    assert seen == [torch.int64]


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shapes_and_seeded_init(name):
    model = tiny(name)
    expected = (3, T, V) if name.endswith("_lm") else (3, V)
    assert model(tokens()).shape == expected
    for scheme in INIT_SCHEMES:
        a = initialize(create_model(name, (T,), V, **TINY[name]), scheme, 3).state_dict()
        b = initialize(create_model(name, (T,), V, **TINY[name]), scheme, 3).state_dict()
        c = initialize(create_model(name, (T,), V, **TINY[name]), scheme, 4).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), scheme  # embeddings, attention and RNNs included
        assert all(not torch.equal(a[k], c[k]) for k in a if "weight" in k and a[k].dim() > 1), scheme


@pytest.mark.parametrize("name", ["transformer_classifier", "rnn_classifier"])
def test_classifiers_take_float_sequences(name):
    kw = {k: v for k, v in TINY[name].items() if k != "vocab"}
    model = create_model(name, (T, 3), 4, **kw)
    assert model(torch.randn(2, T, 3)).shape == (2, 4)
    one = create_model(name, (T,), 4, **kw)  # (B, T) floats: one feature per step
    assert one(torch.randn(2, T)).shape == (2, 4)
    with pytest.raises(TicketlabError, match="vocab"):
        one(tokens())


def test_tie_shares_one_tensor_counted_once():
    model = tiny("transformer_lm", tie=True)
    assert model.head.weight is model.inputs.embed.weight
    names = prunable_names(model, embeddings=True)
    assert names.count("inputs.embed.weight") == 1 and "head.weight" not in names
    rnn = tiny("rnn_lm", tie=True, embed=8)
    assert rnn.head.weight is rnn.inputs.embed.weight


@pytest.mark.parametrize("norm, kind", [("layer", nn.LayerNorm), ("rms", nn.RMSNorm), ("none", nn.Identity)])
def test_norms(norm, kind):
    model = tiny("transformer_lm", norm=norm)
    assert type(model.norm) is kind and type(model.blocks[0].norm1) is kind
    assert model(tokens()).shape == (3, T, V)


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("transformer_lm", dict(d_model=10, heads=3), "multiple of heads"),
        ("transformer_lm", dict(positions="rotary"), "positions"),
        ("transformer_lm", dict(norm="batch"), "norm"),
        ("transformer_lm", dict(vocab=7, tie=True), "vocab=7 and num_classes=11"),
        ("transformer_lm", dict(layers=0), "layers"),
        ("rnn_lm", dict(cell="tanh"), "cell"),
        ("rnn_lm", dict(tie=True), "embed equal to hidden"),
        ("transformer_classifier", dict(vocab=None, tie=True), "vocab=None"),
    ],
)
def test_bad_arguments_are_user_errors(name, kw, match):
    with pytest.raises(TicketlabError, match=match):
        create_model(name, (T,), V, **{**TINY[name], **kw})


def test_language_models_refuse_float_features_and_conv_norm_refuses_rms():
    with pytest.raises(TicketlabError, match="token sequences"):
        create_model("transformer_lm", (T, 3), V, **TINY["transformer_lm"])
    with pytest.raises(TicketlabError, match="integer token ids"):
        tiny("rnn_lm")(torch.randn(2, T))
    with pytest.raises(TicketlabError, match="'rms' is for sequence models"):
        norm_layer("rms", 8)


def test_components_of_a_transformer_and_an_lstm():
    model = tiny("transformer_lm")
    names = prunable_names(model, embeddings=True, prune_biases=True)
    kinds = components(model, names, tokens())
    assert kinds["inputs.embed.weight"] == kinds["pos.weight"] == "embedding"
    assert kinds["blocks.0.attn.in_proj_weight"] == kinds["blocks.0.attn.out_proj.weight"] == "attention"
    assert kinds["blocks.0.attn.in_proj_bias"] == "attention"
    assert kinds["blocks.0.mlp.0.weight"] == kinds["blocks.0.mlp.2.weight"] == "mlp"
    assert kinds["head.weight"] == kinds["head.bias"] == "output"
    assert layer_kinds(model)["blocks.0.attn.in_proj_weight"] == "attention"  # pruned like a user's attention
    lstm = tiny("rnn_classifier")
    kinds = components(lstm, prunable_names(lstm), tokens())
    assert kinds == {"rnn.weight_ih_l0": "recurrent", "rnn.weight_hh_l0": "recurrent", "head.weight": "output"}
    assert shows_components(kinds.values()) and not shows_components(["conv", "mlp", "output"])


def test_component_table_counts_by_hand():
    model = tiny("transformer_lm")
    names = prunable_names(model)
    mask = M.full_mask(model, names)
    mask["blocks.0.attn.in_proj_weight"][:12] = False  # 12 rows of 16: 192 of the 768 in_proj weights pruned
    lines = {line.split()[0]: line.split() for line in component_table(model, mask, tokens()).splitlines()[1:]}
    # attention: in_proj (48 x 16) + out_proj (16 x 16) = 1024 weights, 832 kept
    assert lines["attention"][1:4] == ["2", "1024", "832"] and lines["attention"][4] == "81.2500%"
    assert lines["mlp"][1:4] == ["2", "2048", "2048"] and lines["output"][1:4] == ["1", "176", "176"]
    assert lines["total"][1:4] == ["5", "3248", "3056"]


def test_model_args_parse_and_reach_the_factory():
    assert ModelConfig(args=("d_model=32", "layers=1", "dropout=0.5", "tie=true", "positions=sinusoidal")).kwargs() == {
        "d_model": 32,
        "layers": 1,
        "dropout": 0.5,
        "tie": True,
        "positions": "sinusoidal",
    }
    for bad in ("d_model", "=3", "d_model="):
        with pytest.raises(TicketlabError, match="model.args: cannot read"):
            ModelConfig(args=(bad,))
    cfg = config_from_args(
        build_parser().parse_args(["imp", "--model", "transformer_lm", "--args", "d_model=32,layers=1"])
    )
    assert cfg.model.kwargs() == {"d_model": 32, "layers": 1}
    x = tokens(4)
    data = types.SimpleNamespace(
        name="tokens", train=types.SimpleNamespace(x=x), input_shape=(T,), num_classes=5, vocab=V
    )
    model = registry_problem(cfg, data).init_model(0)
    assert model.inputs.embed.weight.shape == (V, 32) and len(model.blocks) == 1  # vocab came from the data
    assert model(x).shape == (4, T, 5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_an_imp_level_on_integer_tokens(name, tmp_path):
    lm = name.endswith("_lm")
    x = torch.randint(0, V, (64, T), generator=torch.Generator().manual_seed(1))
    y = x[:, -1].clone()  # the last token, read from the last position
    model = tiny(name)
    seen = set()
    model.inputs.embed.register_forward_pre_hook(lambda m, args: seen.add(args[0].dtype))
    opts = dict(levels=2, fraction=0.5, steps="4it", eval_every="2it", batch_size=32, lr=1e-2, baselines=())
    embeddings = name == "transformer_lm"
    search = find_ticket(
        model,
        (x, y),
        (x[:32], y[:32]),
        device="cpu",
        output_fn=(lambda out: out[:, -1]) if lm else None,
        prune_embeddings=embeddings,
        output_fraction=0.5,
        **opts,
    )
    assert seen == {torch.int64}
    mask, state = search.ticket.mask, search.ticket.state
    assert ("inputs.embed.weight" in mask) == embeddings
    kept, size = sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())
    assert abs(kept / size - 0.25) < 0.01  # two levels at 50%
    assert all(bool((state[n][~m] == 0).all()) for n, m in mask.items())


def test_the_html_report_shows_the_component_table(tmp_path):
    cfg = tiny_config(
        model={"model": "rnn_classifier", "widths": (), "args": ("hidden=8", "embed=4")},
        train={"steps": "4it", "eval_every": "2it"},
        imp={"levels": 1, "baselines": ()},
    )
    data = load_dataset("synthetic")  # float series (N, 20): the classifier reads them as 20 steps of 1 feature
    run_imp(cfg, registry_problem(cfg, data), tmp_path)
    run = RunDir(tmp_path)
    table = component_panel(run, run.rows())
    # weight_ih (4 gates x 8 hidden, x 4 embed) and weight_hh (32 x 8): 384 weights, half of them kept
    assert re.search(r"recurrent +2 +384 +192 +50.0000%", table)
    assert re.search(r"mlp +1 +4 +2 +50.0000%", table)  # the float series' projection (4 x 1)
    assert re.search(r"output +1 +80 +60 +75.0000%", table)  # the head (10 x 8) at output_fraction 0.25
    mlp = tiny_config(train={"steps": "2it", "eval_every": "2it"}, imp={"levels": 1, "baselines": ()})
    run_imp(mlp, registry_problem(mlp, data), tmp_path / "mlp")
    assert component_panel(RunDir(tmp_path / "mlp"), RunDir(tmp_path / "mlp").rows()) is None
