"""The Python entry point for a user's own network: ``find_ticket(model, train, test, ...)``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import config as C
from ticketlab.data import Dataset, split_validation
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import user_problem
from ticketlab.rundir import RunDir, Ticket, level_count
from ticketlab.user_data import fingerprint, tensors_from


@dataclass
class TicketSearch:
    """The outcome of :func:`find_ticket`: the run, its results rows, and the sparsest ticket."""

    run: RunDir
    rows: list[dict[str, Any]]
    ticket: Ticket

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def at(self, level: int, replicate: int = 0) -> Ticket:
        """The ticket found at another level."""
        return self.run.ticket(level, replicate, self.ticket.mask[next(iter(self.ticket.mask))].device)


# The caller brings the model and the data, so these options would have nothing to act on.
_NOT_FOR_USER_MODELS = ("dataset", "data_dir", "model", "widths", "init")


def _flat_overrides(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    where = {f.name: s for s in C.SECTIONS for f in C.fields_of(s) if f.name not in _NOT_FOR_USER_MODELS}
    where.update(dict.fromkeys(C.LEGACY_MODE_KEYS, "imp"))  # one_shot=True / at_init=True, as before imp.mode
    nested: dict[str, dict[str, Any]] = {}
    for name, value in overrides.items():
        if name in _NOT_FOR_USER_MODELS:
            raise TicketlabError(
                f"find_ticket takes your model and data as arguments; the option {name!r} does not apply"
            )
        if name not in where:
            raise TicketlabError(f"find_ticket got an unknown option {name!r}; options: {', '.join(where)}")
        nested.setdefault(where[name], {})[name] = value
    return nested


def find_ticket(
    model: nn.Module,
    train,
    test,
    /,
    *,
    val=None,
    config: C.ExperimentConfig | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    **options: Any,
) -> TicketSearch:
    """Run IMP on any ``nn.Module`` and return the ticket (mask + rewound weights) at the last level.

    ``train`` / ``test`` / ``val`` are ``(x, y)`` tensors or NumPy arrays (y: integer class indices, shape (N,)),
    or iterables of ``(x, y)`` batches such as a DataLoader (read once into memory). ``options`` are the config
    fields by name, as on the command line: ``levels=5, fraction=0.2, steps="2ep", lr=1e-3, rewind="100it",
    baselines=()``; an option naming a model or dataset is refused (TicketlabError), as is bad data.
    The model's current weights are the original initialisation theta_0 (replicate 0). Results go to
    ``out`` (a run directory, resumable), or to a temporary directory.
    """
    base = config.to_dict() if config is not None else C.ExperimentConfig().to_dict()
    cfg = C.from_dict(C.merge(base, _flat_overrides(options)))
    dev = resolve_device(device)
    tr, te = tensors_from(train, "train"), tensors_from(test, "test")
    if val is not None:
        if cfg.data.val_size:
            raise TicketlabError("give either val= data or the val_size option, not both")
        va = tensors_from(val, "val")
    else:
        tr, va = split_validation(tr, cfg.data.val_size)
    num_classes = int(max(tr.y.max(), te.y.max())) + 1
    data = Dataset("user", tr, te, va, num_classes).to(dev)
    # A run directory belongs to these exact data: resuming with other data is refused.
    fingerprints = [fingerprint(tr), fingerprint(te), fingerprint(va) if va is not None else None]
    problem = user_problem(model, data, cfg.imp.seed).with_identity(data=fingerprints)
    with torch.no_grad():
        try:
            scores = problem.init_model(0)(data.train.x[:2])
        except Exception as e:  # noqa: BLE001 -- report a shape mismatch as the user's error
            raise TicketlabError(
                f"the model cannot take the training inputs of shape {tuple(tr.x.shape[1:])}: {e}"
            ) from e
    if not torch.is_tensor(scores) or scores.dim() != 2 or scores.shape[1] < num_classes:
        shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise TicketlabError(
            f"the model must return class scores of shape (N, classes) with at least {num_classes} classes (the "
            f"labels go up to {num_classes - 1}); it returned {shape}"
        )
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="ticketlab-"))
    run = run_imp(cfg, problem, run_dir, progress=progress)
    return TicketSearch(run, run.results(cfg), run.ticket(level_count(cfg), 0, dev))
