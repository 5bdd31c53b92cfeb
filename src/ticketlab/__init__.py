"""ticketlab: find, train and study lottery tickets in PyTorch."""

__version__ = "0.2.0"  # first: modules imported below read it while the package is initialising

from ticketlab.api import find_supermask, find_ticket
from ticketlab.branches.stability import stability
from ticketlab.config import ExperimentConfig
from ticketlab.errors import TicketlabError
from ticketlab.imp import imp
from ticketlab.masks import apply_mask, density, load_mask, save_mask
from ticketlab.report import grokking_report, mechanism_panels, strong_panels, study_panels  # noqa: F401 -- register their HTML report panels
from ticketlab.rundir import RunDir, Ticket, load_ticket
from ticketlab.supermask import learn_supermask

__all__ = [
    "ExperimentConfig",
    "RunDir",
    "Ticket",
    "TicketlabError",
    "apply_mask",
    "density",
    "find_supermask",
    "find_ticket",
    "imp",
    "learn_supermask",
    "load_mask",
    "load_ticket",
    "save_mask",
    "stability",
]
