"""The commands that study finished runs and the early phase of training (issue 14): ``stability`` (linear mode
connectivity), ``align`` (weight matching, mask transport), ``analyze`` (what tickets share) and ``early-bird``.
:mod:`ticketlab.cli` adds their parsers with :func:`add_parsers` and runs them through :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ticketlab import analyze as AN
from ticketlab import early_bird as EB
from ticketlab.align import align, align_table, transport, transport_table
from ticketlab.analysis import capacity as CAP
from ticketlab.analysis import rewind_model as RWM
from ticketlab.analysis import signal as SIG
from ticketlab.branches import stability as ST
from ticketlab.cli_flags import add_config_flags, config_from_args, parse_levels, run_flags, training_flags
from ticketlab.errors import TicketlabError
from ticketlab.report.html import html_report
from ticketlab.rundir import RunDir, level_count


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The study commands' subparsers."""
    _stability_parser(sub)
    _align_parser(sub)
    _analyze_parser(sub)
    _early_bird_parser(sub)


def _stability_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab stability``: linear mode connectivity of a run's tickets (issue 14)."""
    s = sub.add_parser(
        "stability",
        help="instability of a run's tickets to SGD noise (linear mode connectivity), or barriers between levels",
        description="From each level's mask on the dense weights at step k, train two copies with different data "
        "orders and measure the test error along the line between them (instability: max minus the mean of the "
        "ends; stable under 2 points). --between-levels: the error barrier between the trained tickets of "
        "successive levels instead (no training).",
    )
    s.add_argument("run_dir")
    s.add_argument("--levels", help="comma-separated finished levels, 0 the dense network (default: all finished)")
    s.add_argument("--at", help="steps k to start the copies from, e.g. 0it,100it,2ep (default: the rewind step)")
    s.add_argument("--points", type=int, default=30, help="evaluations along each path (default: 30)")
    s.add_argument("--between-levels", action="store_true", help="barriers between successive levels' tickets")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    s.add_argument("--batch-jobs", default="auto", help="auto, off, or at most K jobs per pass (default: auto)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def _early_bird_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab early-bird``: the imp config flags, and the search's own."""
    eb = sub.add_parser(
        "early-bird",
        help="early-bird tickets: stop dense training when the pruning mask stops changing, prune, train the ticket",
        description="Every --every iterations of dense training, compute the mask the pruning rule gives at --density; "
        "when the newest of the last --fifo masks is within --epsilon (normalised Hamming distance) of each other "
        "one, the ticket has emerged (You et al. 2020): stop, prune, train the ticket and random pruning at its "
        "per-layer densities. Compute compared with IMP to the same density (--against an IMP run, else "
        "estimated). Resumable; config flags as for `imp`.",
    )
    run_flags(eb)
    eb.add_argument("--density", type=float, required=True, help="target density of the mask, in (0, 1)")
    eb.add_argument("--every", default="1ep", help="how often the mask is computed: 1ep, 200it, ... (default: 1ep)")
    eb.add_argument("--fifo", type=int, default=5, help="masks kept and compared, >= 2 (default: 5)")
    eb.add_argument("--epsilon", type=float, default=0.1, help="largest Hamming distance at emergence (default: 0.1)")
    eb.add_argument(
        "--rule",
        default="magnitude",
        choices=("magnitude", "bn-channels"),
        help="magnitude of the prunable weights (as --strategy says), or channels by |BatchNorm gamma| globally, "
        "the paper's (default: magnitude)",
    )
    eb.add_argument(
        "--start",
        default="emergence",
        choices=("emergence", "init"),
        help="the ticket trains from the emergence weights (the paper's) or from theta_0, over the full schedule "
        "(default: emergence)",
    )
    eb.add_argument("--against", metavar="IMP_RUN", help="an IMP run directory to compare compute and accuracy with")
    add_config_flags(eb, mode=False)


def _align_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab align``: the barrier between two replicates before and after weight matching."""
    a = sub.add_parser(
        "align",
        help="error barrier between two replicates' trained networks, before and after permutation alignment",
        description="Between two replicates' trained tickets at one level of a finished IMP run: test error along the "
        "straight line (BatchNorm re-estimated at each point), plain and after Git Re-Basin weight matching of b's "
        "units onto a's (b's mask moved with them). Writes RUN/align.csv; a rerun recomputes nothing.",
    )
    a.add_argument("run_dir")
    a.add_argument("--level", type=int, default=0, help="the level (0: the dense network; default: 0)")
    a.add_argument("--replicates", default="0,1", help="the two replicates, a,b (b is permuted onto a; default: 0,1)")
    a.add_argument("--points", type=int, default=30, help="points on the path, ends included (default: 30)")
    a.add_argument("--repair", action="store_true", help="also the matched path with REPAIR at every point")
    a.add_argument(
        "--transport",
        type=int,
        metavar="LEVEL",
        help="also train a's ticket mask at LEVEL carried into b's coordinates by the level-0 matching, and a's plain "
        "mask, from b's rewind state (jobs under b's level; table against b's own ticket; RUN/transport.csv)",
    )
    a.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    a.add_argument("--batch-jobs", default="auto", help="--transport: as for imp (default: auto)")
    a.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="--transport: bars")


def _analyze_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab analyze``: what the tickets of an IMP run share (signs, gradients, masks of other runs)."""
    a = sub.add_parser(
        "analyze",
        help="what tickets share: sign preservation, gradient/trajectory alignment, mask overlap with other runs",
        description="Per replicate and finished level of an IMP run: sign preservation rho of the ticket, the dense "
        "network and the random baseline; gradient alignment with the early dense gradients; trajectory alignment "
        "at the rewind point; direct, all-weights and effective density. Writes RUN/analysis.csv (read back while "
        "the inputs are unchanged) and, with --against, RUN/overlap.csv.",
    )
    a.add_argument("run_dir")
    a.add_argument("--against", nargs="+", default=[], metavar="RUN2", help="run directories to compare masks with")
    a.add_argument("--levels", help="comma-separated levels (default: every finished level)")
    a.add_argument("--grad-iterations", type=int, default=20, help="early iterations of mean |grad| (default: 20)")
    a.add_argument("--trajectory-batches", type=int, default=5, help="batches of the gradient at k (default: 5)")
    a.add_argument("--signal", action="store_true", help="instead: per-layer variance and gradient norm at the rewind "
                   "point, ticket vs random mask vs mean-field prediction (RUN/signal.csv)")  # fmt: skip
    a.add_argument("--sparse-aware", action="store_true", help="--signal: both masks at sparsity-aware scale (weights "
                   "x 1/sqrt(layer density)), flat prediction (RUN/signal_sparse_aware.csv)")  # fmt: skip
    a.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    a.add_argument(
        "--capacity",
        action="store_true",
        help="instead: generalisation gap, kept weights W, W ln W and learning distance per level (RUN/capacity.csv)",
    )
    a.add_argument("--rewind-model", action="store_true", help="instead: fit A(k,s) = A_dense(1-e^-k/tau)(1-s)^beta "
                   "to the rewind branches; k*(s) (RUN/rewind_model.csv, rewind_fit.json, .png)")  # fmt: skip
    a.add_argument("--epsilon", type=float, help="--rewind-model: k* tolerance (fraction; default 0.01)")


def _stability(args: argparse.Namespace) -> int:
    levels = parse_levels(args.levels, "0,2")
    run_dir = Path(args.run_dir)
    if args.between_levels:
        rows = ST.level_barriers(run_dir, levels=levels, points=args.points, device=args.device)
        print(ST.barrier_table(rows) + f"\n\nbarriers: {run_dir / 'level_barriers.csv'}")
        return 0
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    rows = ST.stability(
        run_dir, levels=levels, at=args.at, points=args.points, device=args.device, progress=progress,
        batch_jobs=args.batch_jobs,
    )  # fmt: skip
    print(ST.stability_table(rows))
    print(f"\npaths: {run_dir / 'stability.csv'}\ninstability: {run_dir / 'instability.csv'}")
    return 0


def _align(args: argparse.Namespace) -> int:
    try:
        a, b = (int(x) for x in args.replicates.split(","))
    except ValueError:
        raise TicketlabError(f"--replicates: cannot read {args.replicates!r}; write two replicates, e.g. 0,1") from None
    if args.transport is not None:  # checked before the paths are measured, not after
        top = level_count(RunDir(args.run_dir).config())
        if not 1 <= args.transport <= top:
            raise TicketlabError(f"--transport {args.transport}: give a pruned level of the run, 1 ... {top}")
    rows = align(
        Path(args.run_dir),
        level=args.level,
        replicates=(a, b),
        points=args.points,
        repair=args.repair,
        device=args.device,
    )
    print(align_table(rows))
    print(f"\nalignment: {Path(args.run_dir) / 'align.csv'}")
    if args.transport is not None:
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        moved = transport(
            Path(args.run_dir),
            args.transport,
            replicates=(a, b),
            device=args.device,
            batch_jobs=args.batch_jobs,
            progress=progress,
        )
        print("\n" + transport_table(moved) + f"\n\nmask transport: {Path(args.run_dir) / 'transport.csv'}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    if args.sparse_aware and not args.signal:  # else the default analysis would run, the flag silently dropped
        raise TicketlabError("--sparse-aware rescales the masks of --signal; add --signal")
    chosen = [flag for flag, on in (("--signal", args.signal), ("--capacity", args.capacity),
              ("--rewind-model", args.rewind_model)) if on]  # fmt: skip
    if len(chosen) > 1:
        raise TicketlabError(f"{' and '.join(chosen)}: give one of them per call")
    if args.epsilon is not None and not args.rewind_model:
        raise TicketlabError("--epsilon is the k* tolerance of --rewind-model; add --rewind-model")
    if args.rewind_model:  # read from results.csv alone: no model, no data (unless steps are in epochs)
        epsilon = 0.01 if args.epsilon is None else args.epsilon
        print(RWM.rewind_table(RWM.rewind_model(Path(args.run_dir), epsilon=epsilon)))
        written = (Path(args.run_dir) / f for f in (RWM.MODEL_CSV, RWM.FIT_JSON, RWM.MODEL_PNG))
        print("\nrewind model: " + ", ".join(map(str, written)))
        return 0
    if args.capacity:  # read from the finished jobs' files alone: no model, no data
        print(CAP.capacity_table(CAP.capacity(Path(args.run_dir))))
        print(f"\ncapacity: {Path(args.run_dir) / CAP.CAPACITY_CSV}\nreport: {html_report(Path(args.run_dir))}")
        return 0
    levels = parse_levels(args.levels)
    if args.signal:
        sa = args.sparse_aware
        print(SIG.signal_table(SIG.signal(Path(args.run_dir), levels=levels, device=args.device, sparse_aware=sa)))
        csv = Path(args.run_dir) / (SIG.SIGNAL_SPARSE_AWARE_CSV if sa else SIG.SIGNAL_CSV)
        print(f"\nsignal: {csv}\nplot: {csv.with_suffix('.png')}")
        return 0
    rows, overlap = AN.analyze(
        Path(args.run_dir),
        against=args.against,
        levels=levels,
        grad_iterations=args.grad_iterations,
        trajectory_batches=args.trajectory_batches,
        device=args.device,
    )
    print(AN.analysis_table(rows))
    if overlap:
        print("\n" + AN.overlap_table(overlap))
    written = [AN.ANALYSIS_CSV, *([AN.OVERLAP_CSV] if overlap else [])]
    print("\nanalysis: " + ", ".join(str(Path(args.run_dir) / name) for name in written))
    print(f"report: {html_report(Path(args.run_dir))}")
    return 0


def _early_bird(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    options = EB.Options(args.density, args.every, args.fifo, args.epsilon, args.rule, args.start)
    run, rows = EB.early_bird(cfg, options, against=args.against, out=args.out, **training_flags(args))
    print(EB.table(rows))
    print(f"\nrun directory: {run.path}\nearly-bird: {run.path / 'early_bird.csv'}\nresults: {run.results_file}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "stability": _stability,
    "align": _align,
    "analyze": _analyze,
    "early-bird": _early_bird,
}
