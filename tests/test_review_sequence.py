"""Mismatched model / data pairs on the sequence side: one line, exit 2, no traceback (issue 16's review)."""

from __future__ import annotations

import pytest
import torch

from ticketlab import cli
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.training.objectives import LANGUAGE_MODEL

TINY = ["--steps", "4it", "--eval-every", "2it", "--levels", "1", "--replicates", "1", "--batch-size", "4"]


@pytest.mark.parametrize("model", ["mlp", "mnist1d_cnn"])
def test_a_float_model_on_token_data_is_one_line_naming_the_sequence_models(model, tmp_path, capsys):
    argv = ["imp", "--dataset", "modular", "--modulus", "5", "--model", model, *TINY, "--no-progress"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"'{model}'" in err and "transformer_lm" in err and "rnn_classifier" in err


def test_a_classifier_on_language_model_targets_is_a_ticketlab_error_not_a_shape_error():
    scores, target = torch.zeros(2, 7), torch.zeros(2, 3, dtype=torch.long)  # one row per sequence, 3 targets each
    with pytest.raises(TicketlabError, match="every position"):
        LANGUAGE_MODEL.loss(scores, target)
    with pytest.raises(TicketlabError, match="transformer_lm or rnn_lm"):
        LANGUAGE_MODEL.sums(scores, target)
    loss = LANGUAGE_MODEL.loss(torch.zeros(2, 3, 7), target)  # per-position scores still work: ln 7 per token
    assert loss.item() == pytest.approx(torch.log(torch.tensor(7.0)).item())


def test_mnist1d_cnn_on_a_one_feature_series_says_what_to_use():
    with pytest.raises(TicketlabError, match="40 channels of length 1"):
        create_model("mnist1d_cnn", (40, 1), 10)
    assert create_model("mnist1d_cnn", (40,), 10)(torch.zeros(2, 40)).shape == (2, 10)


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--modulus", "7"], "--modulus 7"),
        (["--corpus", "tiny-shakespeare"], "--corpus"),
        (["--context", "8"], "--context"),
    ],
)
def test_a_token_dataset_option_given_to_another_dataset_is_one_line_not_ignored(flags, named, tmp_path, capsys):
    # once silently ignored while changing the run's hash (a second run directory for the same experiment)
    argv = ["imp", "--dataset", "synthetic", "--widths", "8", *flags, *TINY, "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "'synthetic' does not use it" in err
    assert not any(tmp_path.iterdir())
