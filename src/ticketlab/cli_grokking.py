"""``ticketlab grokking``: grokking tickets (issue 16, Minegishi et al. 2025). :mod:`ticketlab.cli` adds the parser
with :func:`add_parsers` and runs the command through :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ticketlab import grokking as G
from ticketlab.cli_flags import add_config_flags, config_from_args
from ticketlab.errors import TicketlabError
from ticketlab.report import grokking_report  # noqa: F401 -- registers `ticketlab report` for grokking runs


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``grokking`` subparser."""
    s = sub.add_parser(
        "grokking",
        help="grokking tickets: masks from the memorising and the generalising network, trained from theta_0",
        description="Per replicate, train the dense network from theta_0, evaluating train (whole set) and test "
        "accuracy every --eval-every; the memorisation step is the first evaluation with train accuracy >= "
        "--memorised-at, the generalisation step the first with test accuracy >= --generalised-at. At each --density, "
        "train from theta_0 (same data order) the masks: generalised and memorised (magnitude of the weights at those "
        "steps), snip and synflow (at theta_0), random (the generalised mask's per-layer counts); per-layer counts "
        "follow --strategy and the per-layer fraction flags. Writes results.csv, summary.csv and curves.png. "
        "Resumable. The IMP-only flags (--levels, --rewind, --target-density, --baselines, --criterion, --units, "
        "--ladder, --on-collapse) are refused.",
    )
    s.add_argument("--density", default="0.4", help="comma-separated fractions kept, in (0, 1) (default: 0.4)")
    s.add_argument(
        "--memorised-at", type=float, default=0.99, help="train accuracy that counts as memorised (default: 0.99)"
    )
    s.add_argument(
        "--generalised-at", type=float, default=0.95, help="test accuracy that counts as generalised (default: 0.95)"
    )
    s.add_argument("--preset", help="named config (see `ticketlab presets`)")
    s.add_argument("--config", help="YAML or JSON file with sections data/model/train/prune/imp")
    s.add_argument("--out", default="runs", help="directory holding run directories (default: runs)")
    s.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, ... (default: auto)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="live progress bars")
    add_config_flags(s, mode=False)


# IMP's own flags, which a grokking run does not read
REFUSED = {
    "imp": ("levels", "rewind", "target_density", "baselines"),
    "prune": ("criterion", "units", "ladder", "on_collapse"),
}


def _densities(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TicketlabError(f"--density {text!r}: give comma-separated fractions kept, e.g. 0.4 or 0.2,0.4") from None


def _grokking(args: argparse.Namespace) -> int:
    for key, value in vars(args).items():
        section, _, name = key.partition(".")
        if name in REFUSED.get(section, ()) and value is not None:
            raise TicketlabError(f"--{name.replace('_', '-')} is an IMP option that `ticketlab grokking` does not use")
    options = G.Options(_densities(args.density), args.memorised_at, args.generalised_at)
    cfg = config_from_args(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    run, _, summary = G.grokking_run(cfg, options, out=args.out, device=args.device, progress=progress)
    print(G.table(summary))
    print(f"\nrun directory: {run.path}\nresults: {run.results_file}\nplot: {run.path / 'curves.png'}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"grokking": _grokking}
