"""TensorBoard scalars for every training job (``--tensorboard DIR``).

Each job writes its own event files under ``DIR/<run directory name>/replicate_R/level_LL/<branch>``, so
TensorBoard (``tensorboard --logdir DIR``) lists one curve per job and filters by run, replicate, level or branch.
At every evaluation: ``lr``, ``train_loss`` (the mean since the last evaluation), ``test_loss``, ``test_acc`` and,
with a validation split, ``val_loss``, ``val_acc``; at the start, the job's ``density`` (over the pruned tensors);
at the end, ``final_test_acc`` and ``best_test_acc``. The step axis is the training iteration. A job that starts
again (a resumed run) replaces its own event files, so curves are never doubled.

Needs the ``tensorboard`` package (``pip install 'ticketlab[tensorboard]'``); PyTorch's ``SummaryWriter`` writes
the files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.rundir import JobFiles
from ticketlab.training import Observer, TrainResult

SCALARS = ("lr", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc")


def writer_class() -> type:
    """PyTorch's ``SummaryWriter``; a TicketlabError naming the install when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TicketlabError(
            "--tensorboard needs the tensorboard package: pip install 'ticketlab[tensorboard]' (or tensorboard)"
        ) from None
    return SummaryWriter


def log_dir(root: str | Path, run_name: str, files: JobFiles, label: str = "") -> Path:
    """Where a job's event files go: ``root/run_name/replicate_R/level_LL/<branch or label>``."""
    return Path(root) / run_name / f"replicate_{files.replicate}" / f"level_{files.level:02d}" / (label or files.branch)


class TensorBoard(Observer):
    """Writes one job's scalars (see the module docstring) into ``where``."""

    def __init__(self, where: Path, mask: M.Mask):
        self.where, self.density = Path(where), M.density(mask)
        self.writer: Any = None
        self.make = writer_class()

    def wants_model(self, step: int) -> bool:
        return False

    def on_begin(self, model: nn.Module, start: int, end: int) -> None:
        shutil.rmtree(self.where, ignore_errors=True)  # a job trained again replaces its curves
        self.writer = self.make(log_dir=str(self.where))
        self.writer.add_scalar("density", self.density, start)

    def on_eval(self, step: int, row: dict[str, Any]) -> None:
        for key in SCALARS:
            if key in row:
                self.writer.add_scalar(key, row[key], step)

    def on_end(self, model: nn.Module, result: TrainResult) -> None:
        step = result.metrics[-1]["step"] if result.metrics else 0
        self.writer.add_scalar("final_test_acc", result.final_test_acc, step)
        self.writer.add_scalar("best_test_acc", result.best_test_acc, step)
        self.writer.close()
