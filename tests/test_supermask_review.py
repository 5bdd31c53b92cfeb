"""Issue 15 review: bugs a new user met in `ticketlab supermask` and ticketlab.supermask, each pinned here -
biprop's binary activations reaching the first layer's input (or token ids), repeated --k / --method /
--width-sweep values counted as replicates, and the Supermask name errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ticketlab
from ticketlab import cli
from ticketlab import supermask_run as SR
from ticketlab.errors import TicketlabError
from ticketlab.supermask import Supermask


def test_binary_activations_leave_the_first_layers_input_real_when_its_bias_is_masked_too():
    # --prune-biases puts the first layer's bias among the names: its module must still read the real input
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    sm = Supermask(net, ["0.weight", "0.bias", "2.weight"], "biprop", k=1.0, binary_activations=True, first="0.weight")
    x = 3 * torch.randn(5, 4)
    w = sm.effective_weights()
    hidden = torch.relu(F.linear(x, w["0.weight"], w["0.bias"]))  # the first layer: real inputs
    expected = F.linear(torch.sign(hidden), w["2.weight"], net[2].bias)  # every later layer: sign(input)
    assert torch.allclose(sm(x), expected)


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.lin(self.emb(tokens).mean(1))


def test_binary_activations_pass_token_ids_to_an_embedding_as_they_are():
    torch.manual_seed(0)
    net = _Tokens()
    sm = Supermask(net, ["emb.weight", "lin.weight"], "biprop", k=1.0, binary_activations=True)
    tokens = torch.tensor([[3, 7, 9], [0, 5, 2]])
    w = sm.effective_weights()
    expected = F.linear(torch.sign(F.embedding(tokens, w["emb.weight"]).mean(1)), w["lin.weight"], net.lin.bias)
    assert torch.allclose(sm(tokens), expected)


@pytest.mark.parametrize(
    "field, values, flag",
    [("ks", (0.5, 0.5), "--k"), ("methods", ("zhou", "zhou"), "--method"), ("widths", (1.0, 1.0), "--width-sweep")],
)
def test_a_repeated_value_is_refused_not_counted_as_a_second_replicate(field, values, flag):
    with pytest.raises(TicketlabError, match=f"^{flag} .*repeated"):
        SR.Options(**{field: values})


def test_cli_refuses_a_repeated_k_before_writing_anything(tmp_path, capsys):
    args = ["supermask", "--dataset", "synthetic", "--steps", "5it", "--replicates", "1", "--k", "0.5,0.5"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ticketlab: error: --k") and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_supermask_name_errors_say_what_is_wrong():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(TicketlabError, match=r"\['nope'\] are not float parameters"):
        Supermask(net, ["0.weight", "nope"], "edge-popup")
    with pytest.raises(TicketlabError, match="repeat"):  # two scores for one weight: the first would never count
        Supermask(net, ["0.weight", "0.weight"], "edge-popup")
    with pytest.raises(TicketlabError, match="no prunable weights"):
        Supermask(net, [], "edge-popup")


@pytest.mark.parametrize("flag, value", [("--keep-dense", "first"), ("--levels", "3"), ("--fraction", "0.5")])
def test_imp_flags_that_a_supermask_run_ignores_are_refused(tmp_path, capsys, flag, value):
    # they used to be accepted, ignored (--keep-dense first still masked the first layer) and hashed into the run
    args = ["supermask", "--dataset", "synthetic", "--steps", "5it", "--replicates", "1", flag, value]
    assert cli.main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ticketlab: error: {flag} is an IMP option") and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_find_supermask_with_binary_activations_on_a_model_without_prunable_weights_is_a_one_line_error():
    class Raw(nn.Module):  # a raw parameter used through F.linear: nothing prunable_names recognises
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 8))

        def forward(self, x):
            return F.linear(x, self.w)

    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with pytest.raises(TicketlabError, match="no prunable weights"):  # was an IndexError from first_layer_name
        ticketlab.find_supermask(
            Raw(), (x, y), (x, y), method="biprop", binary_activations=True, steps="2it", batch_size=8, device="cpu"
        )
