"""What a run trains: the data, and how to make its networks (a registered model, or any ``nn.Module``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ticketlab.config import ExperimentConfig
from ticketlab.data import Dataset
from ticketlab.models import create_model, initialize
from ticketlab.seeds import derive_seed
from ticketlab.store import tensor_digest

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Problem:
    """The data and the networks of a run.

    ``init_model(replicate)`` returns that replicate's original network theta_0; ``fresh_model(seed)`` returns a
    newly initialised one (the random re-init baseline). ``identity`` says what the run directory belongs to
    (model, dataset, or the user's weights and data); a run directory holding another identity is refused.
    """

    data: Dataset
    init_model: Callable[[int], nn.Module]
    fresh_model: Callable[[int], nn.Module]
    identity: dict[str, Any] = field(default_factory=dict)

    def with_identity(self, **extra: Any) -> Problem:
        """The same problem, tied to more facts (the data's fingerprint, a starting mask)."""
        return replace(self, identity={**self.identity, **extra})

    def with_init(self, init_model: Callable[[int], nn.Module], **extra: Any) -> Problem:
        """Another theta_0 (e.g. some weights re-drawn), tied to what changed it."""
        return replace(self, init_model=init_model, identity={**self.identity, **extra})


def state_of(model: nn.Module) -> State:
    """A copy of every parameter and buffer (BatchNorm statistics too), in the standard memory layout."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def registry_problem(config: ExperimentConfig, data: Dataset) -> Problem:
    """A :class:`Problem` for a registered model, initialised by the configured scheme."""
    mc = config.model
    kwargs = mc.kwargs()
    device = data.train.x.device

    def build(seed: int) -> nn.Module:
        model = create_model(mc.model, data.input_shape, data.num_classes, **kwargs)
        return initialize(model, mc.init, seed).to(device)

    def init_model(replicate: int) -> nn.Module:
        return build(derive_seed(config.imp.seed, replicate, "init"))

    return Problem(data, init_model, build, {"model": mc.model, "dataset": data.name})


def user_problem(model: nn.Module, data: Dataset, seed: int) -> Problem:
    """A :class:`Problem` for any ``nn.Module``: its current weights are replicate 0's theta_0; other replicates
    and the re-init baseline re-draw it with each module's own ``reset_parameters``."""
    base = copy.deepcopy(model).to(data.train.x.device)

    def init_model(replicate: int) -> nn.Module:
        m = copy.deepcopy(base)
        return initialize(m, "default", derive_seed(seed, replicate, "init")) if replicate else m

    def fresh_model(s: int) -> nn.Module:
        return initialize(copy.deepcopy(base), "default", s)

    weights = tensor_digest(base.state_dict().items())
    return Problem(data, init_model, fresh_model, {"model": type(model).__name__, "weights": weights})
