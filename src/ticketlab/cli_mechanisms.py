"""The commands on what makes a ticket win (issue 17): ``sanity`` (shuffle / reinit / invert checks of pruning at
init), ``elastic`` (ResNet tickets stretched or squeezed across depths) and ``norms`` (the same IMP under each
normalisation and batch size). :mod:`ticketlab.cli` adds their parsers with :func:`add_parsers` and runs them through
:data:`COMMANDS`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ticketlab import norm_study as NS
from ticketlab import presets as P
from ticketlab import sanity as SAN
from ticketlab.cli_flags import add_config_flags, config_from_args, parse_levels, training_flags
from ticketlab.elastic import elastic, elastic_table


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subparsers of ``sanity``, ``elastic`` and ``norms``."""
    _sanity_parser(sub)
    _elastic_parser(sub)
    _norms_parser(sub)


def _sanity_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab sanity``: shuffle / reinit / invert checks of a finished run's tickets, as branches."""
    s = sub.add_parser(
        "sanity",
        help="sanity checks of pruning (at init): shuffled masks, re-initialised weights, inverted scores",
        description="Train each check as a branch off finished levels (Su et al. 2020; Frankle et al. 2021): "
        "shuffle (each layer's mask permuted, same counts, on theta_k), reinit (the mask on a new initialisation), "
        "invert (--at-init runs: the dense network scored again as the trunk did, the highest scores pruned "
        "instead, same counts). Prints and writes RUN_DIR/sanity.csv; a second call trains nothing.",
    )
    s.add_argument("run_dir")
    s.add_argument("--levels", help="comma-separated levels (default: every finished level)")
    s.add_argument("--checks", help=f"comma-separated, of {','.join(SAN.CHECKS)} (default: all that apply to the run)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    s.add_argument("--tensorboard", metavar="DIR", help="write every job's scalars for TensorBoard under DIR")
    s.add_argument("--sparse-kernels", default="auto", choices=("auto", "off"), help="as for imp (default: auto)")
    s.add_argument("--batch-jobs", default="auto", help="as for branch: auto, off, or at most K (default: auto)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def _elastic_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab elastic``: stretch / squeeze a ResNet run's tickets to another depth (Chen et al. 2021)."""
    e = sub.add_parser(
        "elastic",
        help="elastic tickets: a ResNet run's tickets stretched or squeezed to another depth, trained there",
        description="Replicate (stretch) or drop (squeeze) the residual blocks of each ticket of a finished ResNet "
        "IMP run to reach another depth, and train it from the target network's own theta_k beside a random mask "
        "at the same per-layer densities (resumable jobs); writes elastic.csv.",
    )
    e.add_argument("run_dir", help="the source IMP run (a CIFAR ResNet)")
    e.add_argument("--to", required=True, help="the target ResNet, e.g. resnet32")
    e.add_argument("--levels", help="comma-separated source levels (default: every finished level)")
    e.add_argument("--against", nargs="+", default=[], metavar="RUN", help="runs at the target depth to join")
    e.add_argument("--out", help="directory for the elastic run (default: the source run's parent)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    e.add_argument("--tensorboard", metavar="DIR", help="write every job's scalars for TensorBoard under DIR")
    e.add_argument("--sparse-kernels", default="auto", choices=("auto", "off"), help="as for imp (default: auto)")
    e.add_argument("--batch-jobs", default="auto", help="auto, off, or at most K jobs per pass (default: auto)")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def _sanity(args: argparse.Namespace) -> int:
    levels = parse_levels(args.levels)
    rows = SAN.sanity(Path(args.run_dir), levels=levels, checks=SAN.parse_checks(args.checks), **training_flags(args))
    print(SAN.sanity_table(rows))
    print(f"\nsanity: {Path(args.run_dir) / SAN.SANITY_CSV}")
    return 0


def _elastic(args: argparse.Namespace) -> int:
    levels = parse_levels(args.levels)
    where, rows = elastic(
        Path(args.run_dir), args.to, levels=levels, against=args.against, out=args.out, **training_flags(args)
    )
    print(elastic_table(rows))
    print(f"\ntable: {where / 'elastic.csv'}")
    return 0


def _norms_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab norms``: one IMP run per (norm, batch size), tickets against baselines per norm."""
    n = sub.add_parser(
        "norms",
        help="normalisation study: the same IMP once per norm and batch size, tickets vs baselines per norm",
        description="Run the configured IMP (same config, same seeds) once per (norm, batch size), each an ordinary "
        "resumable run in OUT, and tabulate per norm, batch size and level the ticket, random re-init and random "
        "pruning (mean ± sample std) and the ticket's margin over the best baseline; written to OUT/norms.csv. "
        "--steps in epochs keeps the epochs equal across batch sizes (fewer iterations for larger batches); in "
        "iterations it keeps the iterations. Config flags as for `imp`; the model must take a norm (conv models).",
    )
    n.add_argument("--preset", help=f"named config (see `ticketlab presets`); default {P.DEFAULT_PRESET}")
    n.add_argument("--config", help="YAML or JSON file with sections data/model/train/prune/imp")
    n.add_argument("--norms", default=",".join(NS.DEFAULT_NORMS), help="comma-separated (default: %(default)s)")
    n.add_argument(
        "--batch-sizes",
        default=",".join(map(str, NS.DEFAULT_BATCH_SIZES)),
        help="comma-separated (default: %(default)s)",
    )
    n.add_argument("--out", default="runs/norms", help="run directories and norms.csv (default: %(default)s)")
    n.add_argument("--workers", type=int, default=1, help="processes running runs (default: 1)")
    n.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, ... (default: auto)")
    n.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="the study's bar")
    n.add_argument("--metric", default="final_test_acc", choices=("final_test_acc", "best_test_acc"))
    add_config_flags(n)


def _norms(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    norms, sizes = NS.parse_norms(args.norms), NS.parse_batch_sizes(args.batch_sizes)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    path, rows = NS.norm_study(
        cfg, norms, sizes, out=args.out, workers=args.workers, device=args.device, progress=progress, metric=args.metric
    )
    print(NS.study_table(rows, args.metric))
    print(f"\nnorm study: {path}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"sanity": _sanity, "elastic": _elastic, "norms": _norms}
