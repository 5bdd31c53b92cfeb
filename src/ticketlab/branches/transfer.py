"""A ticket trained on another task (dataset or class subset), and/or with another optimizer or LR
(Morcos et al. 2019). The branch brings its own target: the config and problem it trains on."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch

from ticketlab.branches.base import BranchStart, FreshModel, Start, masked, register
from ticketlab.config import ExperimentConfig
from ticketlab.data import iterations_per_epoch, load_configured
from ticketlab.errors import TicketlabError
from ticketlab.plan import Plan
from ticketlab.problem import Problem, registry_problem
from ticketlab.pruning import random_mask


def _target(
    cfg: ExperimentConfig, problem: Problem, plan: Plan, opts: dict[str, Any], device: torch.device
) -> tuple[ExperimentConfig, Problem]:
    """The config and problem a transfer branch trains on."""
    target = _target_config(cfg, opts)
    data = problem.data
    target_data = load_configured(target.data, device) if target.data != cfg.data else data
    if target_data.input_shape != data.input_shape:
        raise TicketlabError(
            f"transfer: {target.data.dataset} has inputs of shape {target_data.input_shape}, the ticket was "
            f"found on {data.input_shape}; pick a dataset of the same shape"
        )
    per_epoch = iterations_per_epoch(len(target_data.train), target.train.batch_size)
    if plan.k >= target.train.steps.iterations(per_epoch):
        raise TicketlabError("transfer: the target's training ends before the ticket's rewind step")
    return target, registry_problem(target, target_data)


def _target_config(cfg: ExperimentConfig, opts: dict[str, Any]) -> ExperimentConfig:
    data, train = {}, {}
    if opts["dataset"]:
        data["dataset"] = opts["dataset"]
    if opts["classes"]:
        data["classes"] = opts["classes"]
    if opts["dataset"] or opts["classes"]:
        data["val_size"] = 0 if opts["dataset"] else cfg.data.val_size
    if opts["optimizer"]:
        train["optimizer"] = opts["optimizer"]
    if opts["lr"]:
        train["lr"] = opts["lr"]
    if not data and not train:
        raise TicketlabError("transfer needs --dataset, --classes, --optimizer or --lr")
    return cfg.replace(data=data, train=train)


@register(target=_target, draws_mask=True)
def transfer(
    s: Start,
    fresh: FreshModel,
    *,
    dataset: Annotated[str, "train the ticket on this dataset"] = "",
    classes: Annotated[str, "on these classes of it, e.g. 5,6,7,8,9"] = "",
    optimizer: Annotated[str, "with this optimizer"] = "",
    lr: Annotated[float, "at this learning rate (0: the run's)"] = 0.0,
    reinit_output: Annotated[
        Literal["auto", "yes", "no"], "re-initialise the output layer: when the task changes (auto), always, or never"
    ] = "auto",
) -> BranchStart:
    """The ticket (mask and theta_k) trained on another dataset or class subset, or with another optimizer or LR.

    The output layer is re-initialised (``auto``) when the task changes: another dataset or classes, or another
    class count; a changed shape gets a random mask at the ticket's density. ``fresh`` builds networks for the
    target task, whose data and training config :func:`_target` sets up."""
    target = fresh(s.seed)
    out = s.output
    bias = out.removesuffix("weight") + "bias"
    new_task = bool(dataset or classes)
    shape_changed = tuple(target.state_dict()[out].shape) != tuple(s.rewind[out].shape)
    if shape_changed and reinit_output == "no":
        raise TicketlabError("transfer: the target has another class count, so the output layer must be re-initialised")
    state = {n: t.clone() for n, t in s.rewind.items()}
    mask = dict(s.mask)
    if reinit_output == "yes" or (reinit_output == "auto" and (new_task or shape_changed)):
        fresh_state = target.state_dict()
        for n in (out, bias):
            if n in fresh_state:
                state[n] = fresh_state[n].to(s.rewind[n].device)
        if shape_changed:
            for n in (out, bias):
                if n in s.mask:
                    dense = {n: torch.ones_like(state[n], dtype=torch.bool)}
                    keep = round(float(s.mask[n].float().mean()) * dense[n].numel())
                    dense[n].view(-1)[keep:] = False
                    mask[n] = random_mask(dense, s.seed, [(n,)])[n]
    return BranchStart(masked(state, mask), mask)
