"""A run's plan, computed once before anything is written: which tensors are pruned, in which groups and at what
rate, where training rewinds to and how long it lasts -- and every check a user's settings can fail.

The trunk (``imp``), the branches and the other workflows read the plan instead of re-deriving these from the
config.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ticketlab import masks as M
from ticketlab import prunable as P
from ticketlab import scores as S
from ticketlab.config import ExperimentConfig
from ticketlab.data import iterations_per_epoch
from ticketlab.errors import TicketlabError
from ticketlab.problem import Problem
from ticketlab.pruning import Group, Unit, alive_units, expand, find_units, one_shot_groups, plan_groups, random_mask
from ticketlab.training.objectives import CLASSIFICATION


@dataclass(frozen=True)
class Plan:
    """What a run computes, in numbers."""

    mode: str  # iterative (prune the previous level's ticket), one-shot (the trained dense net) or at-init
    names: list[str]  # prunable parameters
    groups: list[Group]  # layers (units, with --units) pruned together, and their fraction per level
    per_epoch: int  # iterations per epoch
    k: int  # rewind iteration
    total: int  # training iterations per level (the end of training)
    units: list[Unit] | None  # the neuron / filter layers, when pruning is structured
    output: str | None = None  # the output layer's weight (nearest the output in a forward pass)
    coverage: str = ""  # one line: what is not pruned, count and share of all weights

    @property
    def from_dense(self) -> bool:
        """Whether each level prunes the dense network (one-shot, at init) rather than the previous ticket."""
        return self.mode != "iterative"

    def source_level(self, level: int) -> int:
        """The level whose trained weights ``level``'s mask is pruned from."""
        return 0 if self.from_dense else level - 1


def make_plan(cfg: ExperimentConfig, problem: Problem) -> Plan:
    """The plan of ``cfg`` on ``problem``; TicketlabError for settings that cannot run."""
    model = problem.init_model(0)
    p = cfg.prune
    mode = cfg.imp.mode
    names = P.prunable_names(
        model, prune_biases=p.prune_biases, ignore=p.ignore, patterns=p.prunable, embeddings=p.prune_embeddings
    )
    if not names:
        raise TicketlabError(
            "the model has no prunable parameters left after --ignore (linear, conv, recurrent and attention "
            "weights are; name others with --prunable PATTERN, embeddings with --prune-embeddings)"
        )
    S.get(p.criterion, at_init=mode == "at-init")  # a known criterion, that can score what it is given
    overrides = p.overrides()
    example = problem.data.train.inputs(slice(0, 2))
    output = P.output_layer_name(model, example, names, (problem.data.objective or CLASSIFICATION).logits)
    units = None
    pruned = names
    if p.units != "none":
        S.get(p.units, units=True)
        units, pruned = _unit_layers(model, problem, p.units, names, overrides)
    # the first / last layer kept dense (an explicit --layer-fractions for it wins); never-pruned layers need nothing
    for which, layer in (("first", P.first_layer_name(model, example, names)), ("last", output)):
        if which in p.keep_dense and layer in pruned:
            overrides.setdefault(layer, 0.0)
    groups = plan_groups(
        pruned,
        kinds=P.layer_kinds(model),
        output_name=output,
        strategy=p.strategy,
        fraction=p.fraction,
        conv_fraction=p.conv_fraction,
        output_fraction=p.output_fraction,
        overrides=overrides,
    )
    if cfg.imp.target_density is not None:  # an unreachable target is the user's to fix, before anything runs
        params = dict(model.named_parameters())
        sizes = dict(zip(pruned, (u.count for u in units))) if units else {n: params[n].numel() for n in names}
        one_shot_groups(groups, sizes, cfg.imp.target_density)
    per_epoch = iterations_per_epoch(len(problem.data.train), cfg.train.batch_size)
    k = cfg.imp.rewind.iterations(per_epoch)
    total = cfg.train.steps.iterations(per_epoch)
    if total < 1:
        raise TicketlabError(f"--steps {cfg.train.steps} trains for no iterations; give a positive length")
    if k >= total:
        raise TicketlabError(
            f"rewind point {cfg.imp.rewind} ({k} it) must come before the end of training ({total} it)"
        )
    return Plan(mode, names, groups, per_epoch, k, total, units, output, P.coverage_line(model, names))


def _unit_layers(
    model: nn.Module, problem: Problem, how: str, names: list[str], overrides: dict[str, float]
) -> tuple[list[Unit], list[str]]:
    """The layers whose neurons / filters structured pruning removes, and their weight names."""
    units = find_units(model, problem.data.input_shape)
    if how == "bn":  # network slimming scores the layers that have a BatchNorm
        units = [u for u in units if u.norm is not None]
    pruned = [f"{u.layer}.weight" for u in units if f"{u.layer}.weight" in names]
    if not pruned:
        raise TicketlabError(
            "structured pruning found no layer whose neurons or filters can be removed (a layer qualifies when "
            "its outputs reach only other linear/conv layers, through activations, pooling and BatchNorm"
            + (", and --units bn needs a BatchNorm after it)" if how == "bn" else ")")
        )
    units = [u for u in units if f"{u.layer}.weight" in pruned]
    stray = sorted(set(overrides) - set(pruned))
    if stray:
        raise TicketlabError(
            f"--layer-fractions names {stray}, whose neurons cannot be pruned as units; unit layers: {pruned}"
        )
    return units, pruned


def full_mask(model: nn.Module, plan: Plan) -> M.Mask:
    """Level 0's mask: every prunable tensor dense (with --units, also the units' biases and norms)."""
    full = M.full_mask(model, plan.names)
    if plan.units is None:
        return full
    return expand(plan.units, alive_units(plan.units, full), model, full)


def random_baseline(plan: Plan, problem: Problem, mask: M.Mask, seed: int, allowed: M.Mask | None = None) -> M.Mask:
    """A random mask at the ticket's densities: per pool of layers sharing a threshold (per layer for layerwise
    and ERK), or, for structured tickets, random neurons/filters, as many per layer as the ticket keeps.
    ``allowed``: level 0's mask, when the run started from one (imported from torch.nn.utils.prune)."""
    if plan.units is None:
        pools = [m for g in plan.groups for m in ([(n,) for n in g.members] if g.erk else [g.members])]
        return random_mask(mask, seed, pools, allowed)
    model = problem.init_model(0)
    alive = alive_units(plan.units, mask)
    pools = [(u.layer,) for u in plan.units]  # as many per layer as the ticket keeps, global or not
    chosen = random_mask(alive, seed, pools)
    full = full_mask(model, plan)
    return expand(plan.units, chosen, model, {n: m for n, m in full.items() if n in mask})
