"""What training minimises and evaluation measures, behind one seam.

An :class:`Objective` turns a model's outputs and the targets of a batch into the loss to minimise and into
the sums evaluation reports (loss and correct predictions over examples): classification, classification at the
last position of a sequence (:data:`LAST_TOKEN`), and next-token prediction (:data:`LANGUAGE_MODEL`: per-token
loss and accuracy, so perplexity is the exponential of the evaluated loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data import Split
from ticketlab.errors import TicketlabError


def logits_of(output: Any) -> torch.Tensor:
    """The class scores in a model's output, by one documented rule: a tensor is itself; a tuple or list gives its
    first element (``(logits, hidden)``); a mapping gives its ``"logits"`` entry, or its only entry. Anything else
    is a TicketlabError that says to pass ``output_fn``."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    if isinstance(output, dict):
        if torch.is_tensor(output.get("logits")):
            return output["logits"]
        if len(output) == 1 and torch.is_tensor(next(iter(output.values()))):
            return next(iter(output.values()))
    kind = type(output).__name__ if not isinstance(output, dict) else f"a dict with keys {sorted(map(str, output))}"
    raise TicketlabError(
        f"cannot find the class scores in the model's output ({kind}); return a tensor, a tuple whose first element "
        "is the scores, or a dict with a 'logits' entry, or pass output_fn=lambda out: <the scores>"
    )


@dataclass(frozen=True)
class Objective:
    """Mean cross-entropy over examples, and accuracy (argmax over the last dimension).

    ``output``: how to take the class scores (B, classes) from what the model returns; :func:`logits_of` when None.
    """

    name: str = "classification"
    output: Callable[[Any], torch.Tensor] | None = None

    def logits(self, output: Any) -> torch.Tensor:
        """The class scores in a model's ``output``."""
        return logits_of(output) if self.output is None else self.output(output)

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch: the scores (B, classes) of ``output``, target (B,) int64."""
        return F.cross_entropy(self.logits(output).float(), target)

    def sums(self, output: Any, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(summed loss, correct predictions, examples) of a batch, as tensors on the device (no sync)."""
        return self.logit_sums(self.logits(output), target)

    def logit_sums(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """:meth:`sums` from the class scores (B, classes) themselves."""
        logits = logits.float()
        return (
            F.cross_entropy(logits, target, reduction="sum"),
            (logits.argmax(-1) == target).sum(),
            target.numel(),
        )


CLASSIFICATION = Objective()


@dataclass(frozen=True)
class LastToken(Objective):
    """Classification read at the last position: scores (B, T, C) give their row ``[:, -1]`` (B, C); scores
    (B, C) are used as they are. For sequence models that answer once per sequence (``modular``: the answer
    follows the ``=`` token, Power et al. 2022)."""

    name: str = "last-token"

    def logits(self, output: Any) -> torch.Tensor:
        """The class scores (B, C) at the last position of ``output``."""
        scores = super().logits(output)
        return scores[:, -1] if scores.dim() == 3 else scores


@dataclass(frozen=True)
class LanguageModel(Objective):
    """Next-token prediction: mean cross-entropy over all B*T tokens of scores (B, T, V) against targets (B, T)
    int64; accuracy is per token. :func:`evaluate` then gives the per-token mean loss (nats), and the perplexity is
    its exponential."""

    name: str = "language-model"

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the B*T tokens of a batch: scores (B, T, V), target (B, T) int64."""
        logits = _per_position(self.logits(output).float(), target)
        return F.cross_entropy(logits.flatten(0, -2), target.flatten())

    def logit_sums(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(summed token loss, correct tokens, tokens) from scores (B, T, V) and targets (B, T)."""
        return super().logit_sums(_per_position(logits, target).flatten(0, -2), target.flatten())


def _per_position(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits`` when they hold scores at every target position (B, T, V) for targets (B, T); TicketlabError for
    one score row per sequence (a classifier's (B, V)), which cross-entropy would reject with a shape error."""
    if logits.dim() != target.dim() + 1:
        raise TicketlabError(
            f"language modelling needs scores at every position (B, T, V) for targets {tuple(target.shape)}; the "
            f"model gave {tuple(logits.shape)} (a classifier): use a language model such as transformer_lm or rnn_lm"
        )
    return logits


LAST_TOKEN = LastToken()
LANGUAGE_MODEL = LanguageModel()


CPU_PIECE = 1024  # rows per forward pass on a CPU: LeNet-300-100's 10,000 test images in 1024s take 3/4 of the time


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, objective: Objective = CLASSIFICATION, chunk: int = 8192
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``split`` (in eval mode; the mode is restored after).

    The sums are taken per ``chunk`` examples and added up, on the device, with one sync at the end. On a CPU each
    chunk's forward pass runs in near-equal pieces of at most :data:`CPU_PIECE` rows, whose activations stay in
    cache (and a conv net's stay in memory); a row's scores do not depend on the rows beside it, so the results are
    the same bits as one pass per chunk.
    """
    was_training = model.training
    model.eval()
    device = split.x.device
    piece = CPU_PIECE if device.type == "cpu" else chunk
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for i in range(0, len(split), chunk):
        stop = min(i + chunk, len(split))
        pieces = -(-(stop - i) // piece)
        bounds = [i + (stop - i) * k // pieces for k in range(pieces + 1)]  # no piece under half of ``piece`` rows
        if pieces == 1:
            batch_loss, batch_correct, n = objective.sums(model(split.inputs(slice(i, stop))), split.y[i:stop])
        else:
            scores = [objective.logits(model(split.inputs(slice(a, b)))) for a, b in zip(bounds, bounds[1:])]
            batch_loss, batch_correct, n = objective.logit_sums(torch.cat(scores), split.y[i:stop])
        loss += batch_loss
        correct += batch_correct
        count += n
    model.train(was_training)
    count = max(count, 1)
    return loss.item() / count, correct.item() / count
