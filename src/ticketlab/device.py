"""Where a run's data and models live."""

from __future__ import annotations

import torch

from ticketlab.errors import TicketlabError


def resolve_device(name: str) -> torch.device:
    """``auto`` (the GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``, checked; TicketlabError otherwise.

    On a GPU, cuDNN is put in deterministic mode: the same seed must give the same result, and a killed run
    must resume to the result an uninterrupted one gives.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TicketlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TicketlabError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TicketlabError(f"device {name!r}: there are only {torch.cuda.device_count()} GPU(s)")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device
