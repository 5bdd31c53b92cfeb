"""``ticketlab supermask``: strong lottery tickets (issue 15). :mod:`ticketlab.cli` adds the parser with
:func:`add_parsers` and runs the command through :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ticketlab import supermask as SM
from ticketlab import supermask_run as SR
from ticketlab.cli_flags import add_config_flags, config_from_args
from ticketlab.errors import TicketlabError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The strong-ticket commands' subparsers."""
    s = sub.add_parser(
        "supermask",
        help="strong lottery tickets: learn a mask over frozen random weights (zhou, edge-popup, biprop)",
        description="For each width and replicate, draw theta_0 and freeze it; learn a supermask over it with each "
        "--method at each --k (the training flags apply to the scores), evaluate a random mask of the same per-layer "
        "density on the same weights, and train the dense network as the reference. Writes results.csv (a method "
        "column), summary.csv, accuracy_vs_k.png and, with several widths, accuracy_vs_width.png. Resumable; config "
        "flags: --replicates, --seed, the model, data and training flags, and --prune-biases, --prune-embeddings, "
        "--prunable, --ignore (which weights get a mask); the other prune and imp flags are IMP's and refused.",
    )
    s.add_argument(
        "--method", default="edge-popup", help=f"comma-separated, of {', '.join(SM.METHODS)} (default: edge-popup)"
    )
    s.add_argument(
        "--k",
        default="0.5",
        help="comma-separated fractions of each layer kept (edge-popup, biprop; "
        "zhou: the starting keep probability), e.g. 0.3,0.5,0.7 (default: 0.5)",
    )
    s.add_argument(
        "--weights",
        default="signed-constant",
        choices=SM.WEIGHTS,
        help="the frozen weights: theta_0 as the model draws it, or its signed Kaiming constant "
        "sign(w) * sqrt(2 / fan_in) / sqrt(k) (default: signed-constant)",
    )
    s.add_argument("--rescale", action="store_true", help="zhou: dynamic weight rescaling (size / kept per layer)")
    s.add_argument(
        "--binary-activations",
        action="store_true",
        help="biprop: binarise the inputs of every layer but the first (sign, straight-through gradient)",
    )
    s.add_argument(
        "--width-sweep",
        default="1",
        help="comma-separated width multipliers of the network, e.g. 0.5,1,2,4 (default: 1)",
    )
    s.add_argument("--dense-lr", type=float, default=0.0, help="the dense baseline's learning rate (default: --lr)")
    s.add_argument("--preset", help="named config (see `ticketlab presets`)")
    s.add_argument("--config", help="YAML or JSON file with sections data/model/train/prune/imp")
    s.add_argument("--out", default="runs", help="directory holding run directories (default: runs)")
    s.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, ... (default: auto)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="live progress bars")
    add_config_flags(s, mode=False)


def _floats(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TicketlabError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0.3,0.5,0.7") from None


# the prune and imp fields a supermask run reads (which weights are masked, replicates, seed); the others are IMP's
USED = {"prune": ("prune_biases", "prune_embeddings", "prunable", "ignore"), "imp": ("replicates", "seed")}


def _supermask(args: argparse.Namespace) -> int:
    for key, value in vars(args).items():
        section, _, name = key.partition(".")
        if section in USED and name not in USED[section] and value is not None:
            flag = "--" + name.replace("_", "-")
            raise TicketlabError(f"{flag} is an IMP option that `ticketlab supermask` does not use; drop it")
    cfg = config_from_args(args)
    options = SR.Options(
        methods=tuple(m.strip() for m in args.method.split(",") if m.strip()),
        ks=_floats("--k", args.k),
        weights=args.weights,
        rescale=args.rescale,
        binary_activations=args.binary_activations,
        widths=_floats("--width-sweep", args.width_sweep),
        dense_lr=args.dense_lr,
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    run, rows = SR.supermask_run(cfg, options, out=args.out, device=args.device, progress=progress)
    print(SR.table(SR.summarize_rows(rows)))
    print(f"\nrun directory: {run.path}\nresults: {run.results_file}\nplots: {run.path / 'accuracy_vs_k.png'}")
    print(f"report: {run.path / 'report.html'}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"supermask": _supermask}
