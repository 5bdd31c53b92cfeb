"""Pruning, one module per axis: how many each layer keeps (:mod:`.allocate`), which ones (:mod:`.topk`),
whole neurons and filters (:mod:`.units`), and masks that cut the network (:mod:`.collapse`).

What to keep is scored by the criteria of :mod:`ticketlab.scores`; the public names are re-exported here.
"""

from ticketlab.pruning.allocate import (
    STRATEGIES,
    Group,
    as_group,
    at_level,
    compound,
    erk_densities,
    on_ladder,
    one_shot_groups,
    plan_groups,
)
from ticketlab.pruning.collapse import collapse, dead_outputs
from ticketlab.pruning.topk import keep_counts, prune, prune_in_rounds, prune_to, random_mask, straight_through_topk
from ticketlab.pruning.units import (
    Unit,
    add_slimming_grad,
    alive_units,
    example_input,
    expand,
    find_units,
    masked_param,
    silent_units,
    unit_params,
)

__all__ = [
    "straight_through_topk",
    "STRATEGIES",
    "Group",
    "Unit",
    "add_slimming_grad",
    "alive_units",
    "as_group",
    "at_level",
    "collapse",
    "compound",
    "on_ladder",
    "dead_outputs",
    "erk_densities",
    "example_input",
    "expand",
    "find_units",
    "keep_counts",
    "masked_param",
    "one_shot_groups",
    "plan_groups",
    "prune",
    "prune_in_rounds",
    "prune_to",
    "random_mask",
    "silent_units",
    "unit_params",
]
