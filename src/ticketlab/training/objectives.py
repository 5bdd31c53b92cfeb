"""What training minimises and evaluation measures, behind one seam.

An :class:`Objective` turns a model's outputs and the targets of a batch into the loss to minimise and into
the sums evaluation reports (loss and correct predictions over examples). Classification is the objective
today; a next-token objective (per-token loss, perplexity) plugs in here without touching the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data import Split


@dataclass(frozen=True)
class Objective:
    """Mean cross-entropy over examples, and accuracy (argmax over the last dimension)."""

    name: str = "classification"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch: output (B, classes) float, target (B,) int64."""
        return F.cross_entropy(output.float(), target)

    def sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(summed loss, correct predictions, examples) of a batch, as tensors on the device (no sync)."""
        output = output.float()
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
