"""What every branch family shares: :class:`Start` (a finished level, as a branch sees it), :class:`BranchStart`
(what a branch returns), and the registry a branch joins with :func:`register`.

A branch is one function ``fn(start, fresh, *, option: Annotated[type, "help"] = default, ...) -> BranchStart``.
Its keyword-only parameters ARE its options: their names, types, defaults and help are read from the signature
once, here, and the ``ticketlab branch`` flags, their help and ``parse_options`` all come from that reading.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.config import ExperimentConfig, TrainConfig
from ticketlab.errors import TicketlabError
from ticketlab.jobs import Job
from ticketlab.plan import Plan
from ticketlab.problem import Problem
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed

State = dict[str, torch.Tensor]
FreshModel = Callable[[int], nn.Module]  # a newly initialised network for a seed (the target task's, for transfer)
# The config and problem a branch trains on, when not the run's own (transfer): (cfg, problem, plan, opts, device)
TargetSetup = Callable[..., tuple[ExperimentConfig, Problem]]


@dataclass(frozen=True)
class Start:
    """A finished level, as a branch sees it."""

    cfg: ExperimentConfig
    replicate: int
    level: int
    mask: M.Mask  # the level's ticket
    rewind: State  # theta_k, the trunk's rewind point (theta_0 when k = 0)
    init: State  # theta_0
    trained: State  # the trained weights the level's mask was pruned from
    k: int  # the trunk's rewind iteration
    total: int  # the end of training (iterations)
    per_epoch: int  # iterations per epoch
    seed: int  # this branch's own seed (replicate, level, name)
    dense_at: Callable[[int], State]  # the dense network's weights after any number of iterations
    trunk_random: Callable[[], M.Mask]  # the trunk's own random-pruning baseline mask for this level
    structured: bool  # the run prunes whole units (masks also hold biases and norm parameters)
    output: str | None = None  # the output layer's weight


@dataclass(frozen=True)
class BranchStart:
    """Where a branch's training starts: the weights (a full state dict), the mask, the training config (None:
    the run's, or the transfer target's), and the iteration (None: the trunk's rewind step k)."""

    state: State
    mask: M.Mask
    train: TrainConfig | None = None
    begin: int | None = None


@dataclass(frozen=True)
class Option:
    """One option of a branch, read from a keyword-only parameter of its function."""

    name: str
    type: type  # str, int or float
    default: Any
    help: str
    choices: tuple[str, ...] = ()  # from a Literal["a", "b"] annotation

    def describe(self) -> str:
        """The help with its choices and default, as ``ticketlab branch --help`` shows it."""
        extra = [f"one of {', '.join(self.choices)}"] if self.choices else []
        if self.default:  # "" and 0 mean "not asked for"
            extra.append(f"default: {self.default}")
        return self.help + (f" ({'; '.join(extra)})" if extra else "")

    def parse(self, branch: str, value: Any) -> Any:
        """``value`` (text from the command line, or a Python value) as this option's type."""
        try:
            out = self.type(value)
        except (TypeError, ValueError):
            raise TicketlabError(
                f"branch {branch}: cannot read {self.name}={value!r} as {self.type.__name__}"
            ) from None
        if isinstance(out, str):  # "5, 6" and "5,6" are one request, one job
            out = ",".join(part.strip() for part in out.split(",") if part.strip())
        if self.choices and out not in self.choices:
            raise TicketlabError(f"{branch}: {self.name} must be one of {', '.join(self.choices)}, not {out!r}")
        return out


BranchFn = Callable[..., BranchStart]


@dataclass(frozen=True)
class Branch:
    """A registered branch: its function, its options, and what it needs of the runner."""

    name: str
    fn: BranchFn
    options: dict[str, Option]
    summary: str  # the first line of its docstring
    target: TargetSetup | None = None  # sets up another config and problem to train on (transfer)
    draws_mask: bool = False  # it may draw a mask of its own, which could keep weights a disjoint round forbids

    @property
    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options.values()}


BRANCHES: dict[str, Branch] = {}


def register(fn: BranchFn | None = None, *, target: TargetSetup | None = None, draws_mask: bool = False) -> Any:
    """Register a branch (``@register`` or ``@register(target=..., draws_mask=True)``) under its function's name."""

    def wrap(f: BranchFn) -> BranchFn:
        if f.__name__ in BRANCHES:
            raise ValueError(f"a branch named {f.__name__} is registered already")
        summary = (inspect.getdoc(f) or "").split("\n")[0]
        BRANCHES[f.__name__] = Branch(f.__name__, f, options_of(f), summary, target, draws_mask)
        return f

    return wrap if fn is None else wrap(fn)


def options_of(fn: BranchFn) -> dict[str, Option]:
    """The options of a branch function: its keyword-only parameters, each ``Annotated[type, "help"] = default``
    with type str, int, float or a Literal of strings. A parameter not written so is a programming error."""
    hints = typing.get_type_hints(fn, include_extras=True)
    options = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not p.KEYWORD_ONLY:
            continue
        hint = hints.get(p.name)
        meta = getattr(hint, "__metadata__", ())
        if typing.get_origin(hint) is not Annotated or not meta or not isinstance(meta[0], str):
            raise TypeError(f"branch {fn.__name__}: option {p.name} needs an Annotated[type, 'help'] hint")
        kind, choices = hint.__origin__, ()
        if typing.get_origin(kind) is Literal:
            kind, choices = str, tuple(typing.get_args(kind))
        if kind not in (str, int, float) or p.default is p.empty:
            raise TypeError(f"branch {fn.__name__}: option {p.name} must be a str, int or float with a default")
        options[p.name] = Option(p.name, kind, p.default, meta[0], choices)
    return options


def masked(state: State, mask: M.Mask) -> State:
    """``state`` with the pruned weights zeroed (copies; tensors without a mask kept as they are)."""
    return {n: (t * mask[n].to(t.device, t.dtype) if n in mask else t.clone()) for n, t in state.items()}


def mask_job(
    run: RunDir,
    cfg: ExperimentConfig,
    problem: Problem,
    plan: Plan,
    r: int,
    level: int,
    name: str,
    mask: M.Mask,
    rewind: State,
    inputs: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> Job:
    """The job training ``mask`` on the weights ``rewind`` from the rewind step ``plan.k`` to the end, with replicate
    ``r``'s data order, like the trunk trains a ticket; under ``run``'s job directory (r, level, name). ``inputs``
    (SHA-256 digests of what it starts from) decide when a finished job is reused."""
    files = run.job(r, level, name)

    def build():
        model = problem.init_model(r)
        model.load_state_dict(masked(rewind, mask))
        return model, mask

    return Job(
        files=files,
        build=build,
        train=cfg.train,
        data=problem.data,
        data_seed=derive_seed(cfg.imp.seed, r, "data"),
        start=plan.k,
        inputs=inputs,
        label=name,
        options=options,
        init_file=files.init,
        mask_file=files.mask,
    )
