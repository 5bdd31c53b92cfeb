"""What a run trains: the data, and how to make its networks (a registered model, or any ``nn.Module``)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ticketlab.config import ExperimentConfig
from ticketlab.data import Dataset
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model, initialize, model_arguments, model_names, redraw
from ticketlab.seeds import derive_seed
from ticketlab.store import tensor_digest
from ticketlab.user_data import integer_hint

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
    if getattr(data, "vocab", None) is not None and "vocab" not in model_arguments(mc.model):
        takes_tokens = [name for name in model_names() if "vocab" in model_arguments(name)]
        raise TicketlabError(
            f"model {mc.model!r} takes float inputs; dataset {data.name!r} gives integer token ids: "
            f"use --model {' / '.join(takes_tokens)}"
        )
    if getattr(data, "vocab", None) is not None and "vocab" in model_arguments(mc.model) and "vocab" not in kwargs:
        kwargs["vocab"] = data.vocab  # token data: the input vocabulary size, from the dataset
    device = data.train.x.device

    def build(seed: int) -> nn.Module:
        model = create_model(mc.model, data.input_shape, data.num_classes, **kwargs)
        return initialize(model, mc.init, seed).to(device)

    def init_model(replicate: int) -> nn.Module:
        return build(derive_seed(config.imp.seed, replicate, "init"))

    return Problem(data, init_model, build, {"model": mc.model, "dataset": data.name})


def user_problem(
    model: nn.Module | Callable[[int], nn.Module],
    data: Dataset,
    seed: int,
    *,
    warn: Callable[[str], None] | None = None,
) -> Problem:
    """A :class:`Problem` for any ``nn.Module``, given as an instance or as a factory ``seed -> nn.Module``.

    An instance: its current weights are replicate 0's theta_0 (ticketlab works on a copy; a lazy module's copy is
    materialised by one forward pass on two training examples, drawn under the run's ``seed``); later replicates
    and the re-init baseline re-draw every parameter with each module's own reset (:func:`redraw`), which is
    PyTorch's default init, not the caller's. What nothing re-draws is named once, in one line to ``warn``
    (default: stderr). A factory: replicate r is ``factory(derive_seed(seed, r, "init"))`` and the re-init baseline
    ``factory(its seed)``, each called with the global RNG seeded by that seed, so the caller's own init is used;
    it must give the same weights for the same seed (TicketlabError otherwise). The run's identity is the model's
    type and the digest of replicate 0's weights.
    """
    device = data.train.x.device
    probe = data.train.x[:2]
    if isinstance(model, nn.Module):
        base = _materialised(copy.deepcopy(model), probe, seed).to(device)
        missed: list[list[str]] = []  # what the first re-draw left, reported once

        def redrawn(s: int) -> nn.Module:
            m = copy.deepcopy(base)
            left = redraw(m, s)
            if left and not missed:
                missed.append(left)
                (warn or _stderr)(
                    f"re-drawing theta_0 (replicates after the first, the re-init baseline) leaves {len(left)} "
                    f"parameter(s) as they are, which no module's reset_parameters re-draws: {', '.join(left)}; "
                    "pass a model factory (seed -> nn.Module) to draw them your way"
                )
            return m

        def init_model(replicate: int) -> nn.Module:
            return redrawn(derive_seed(seed, replicate, "init")) if replicate else copy.deepcopy(base)

        fresh_model = redrawn
    else:
        factory = model

        def fresh_model(s: int) -> nn.Module:
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(s)
                m = factory(s)
            if not isinstance(m, nn.Module):
                raise TicketlabError(f"the model factory must return an nn.Module; it returned {type(m).__name__}")
            return _materialised(m, probe, s).to(device)

        base = fresh_model(derive_seed(seed, 0, "init"))
        again = fresh_model(derive_seed(seed, 0, "init"))
        if tensor_digest(base.state_dict().items()) != tensor_digest(again.state_dict().items()):
            raise TicketlabError(
                "the model factory gave different weights for the same seed; draw them from the seed it is given "
                "(or from torch's global RNG, which ticketlab seeds before each call)"
            )

        def init_model(replicate: int) -> nn.Module:
            return copy.deepcopy(base) if replicate == 0 else fresh_model(derive_seed(seed, replicate, "init"))

    weights = tensor_digest(base.state_dict().items())
    return Problem(data, init_model, fresh_model, {"model": type(base).__name__, "weights": weights})


def _materialised(model: nn.Module, inputs: torch.Tensor, seed: int) -> nn.Module:
    """``model`` with its lazy modules (``nn.LazyLinear`` ...) materialised by one forward pass on ``inputs``, in eval
    mode and without gradients, their weights drawn under ``seed``."""
    if not any(is_lazy(p) for p in model.parameters()):
        return model
    where = next(model.parameters()).device
    was_training = model.training
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        model.eval()
        try:
            model(inputs.to(where))
        except Exception as e:  # noqa: BLE001 -- the user's model failing on the user's data
            raise TicketlabError(
                f"the model's lazy modules cannot be materialised with the training inputs of shape "
                f"{tuple(inputs.shape[1:])}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                f"{integer_hint(inputs)}"
            ) from e
    return model.train(was_training)


def _stderr(text: str) -> None:
    print(f"ticketlab: warning: {text}", file=sys.stderr, flush=True)
