"""What training minimises and evaluation measures, behind one seam.

An :class:`Objective` turns a model's outputs and the targets of a batch into the loss to minimise and into
the sums evaluation reports (loss and correct predictions over examples). Classification is the objective
today; a next-token objective (per-token loss, perplexity) plugs in here without touching the training loop.
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
        output = self.logits(output).float()
        return (
            F.cross_entropy(output, target, reduction="sum"),
            (output.argmax(-1) == target).sum(),
            target.numel(),
        )


CLASSIFICATION = Objective()


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, objective: Objective = CLASSIFICATION, chunk: int = 8192
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``split`` (in eval mode; the mode is restored after)."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device, dtype=torch.long)
    count = 0
    for i in range(0, len(split), chunk):
        batch_loss, batch_correct, n = objective.sums(model(split.inputs(slice(i, i + chunk))), split.y[i : i + chunk])
        loss += batch_loss
        correct += batch_correct
        count += n
    model.train(was_training)
    count = max(count, 1)
    return loss.item() / count, correct.item() / count
