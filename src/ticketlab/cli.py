"""The ``ticketlab`` command. Flags are generated from the config dataclasses, so each has a help string.

User errors print one line and exit with status 2, with no traceback and nothing written.
"""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from ticketlab import analyze as AN
from ticketlab import branches as B
from ticketlab import compare_criteria
from ticketlab import config as C
from ticketlab import early_bird as EB
from ticketlab import presets as P
from ticketlab import scores as S
from ticketlab import sweep as SW
from ticketlab.align import align, align_table, transport, transport_table
from ticketlab.branches import stability as ST
from ticketlab.configfile import load_file
from ticketlab.data import dataset_names
from ticketlab.disjoint import disjoint
from ticketlab.errors import TicketlabError
from ticketlab.export import export_ticket
from ticketlab.imp import imp
from ticketlab.models import model_names
from ticketlab.report import report
from ticketlab.report.html import html_report
from ticketlab.report.plots import imp_plot
from ticketlab.report.tables import cost_table, criteria_table, disjoint_table, imp_table


def _add_config_flags(parser: argparse.ArgumentParser, *, mode: bool = True) -> None:
    """One flag per config field; ``mode=False`` leaves out imp.mode (for a command that chooses it itself)."""
    # The defaults shown are what a run without --preset/--config uses: the default preset over the dataclasses.
    effective = C.from_dict(P.preset(P.DEFAULT_PRESET))
    for section in C.SECTIONS:
        group = parser.add_argument_group(f"{section} options")
        for f in C.fields_of(section):
            if (section, f.name) == ("imp", "mode"):
                if mode:
                    _mode_flags(group, f.metadata["help"])
                continue
            flag = "--" + f.name.replace("_", "-")
            default = getattr(getattr(effective, section), f.name)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text = f"{f.metadata['help']} (default: {shown})"
            choices = S.names() if (section, f.name) == ("prune", "criterion") else f.metadata["choices"]
            if choices:
                help_text += f"; one of {', '.join(choices)}"
            kwargs: dict[str, Any] = {"dest": f"{section}.{f.name}", "default": None, "help": help_text}
            if C.field_type(section, f.name) is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                group.add_argument(flag, metavar=f.name.upper(), **kwargs)


def _mode_flags(group: argparse._ArgumentGroup, help_text: str) -> None:
    """``--mode`` and its shorthands ``--one-shot`` / ``--at-init`` (one of the three at most)."""
    one = group.add_mutually_exclusive_group()
    kwargs: dict[str, Any] = {"dest": "imp.mode", "default": None}
    one.add_argument("--mode", choices=C.MODES, help=f"{help_text} (default: iterative)", **kwargs)
    one.add_argument("--one-shot", action="store_const", const="one-shot", help="same as --mode one-shot", **kwargs)
    one.add_argument("--at-init", action="store_const", const="at-init", help="same as --mode at-init", **kwargs)


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"named config (see `ticketlab presets`); default {P.DEFAULT_PRESET}")
    p.add_argument("--config", help="YAML or JSON file with sections data/model/train/prune/imp")
    p.add_argument("--out", default="runs", help="directory holding run directories (default: runs)")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--tensorboard", metavar="DIR", help="write every job's scalars for TensorBoard under DIR")
    p.add_argument(
        "--sparse-kernels",
        default="auto",
        choices=("auto", "off"),
        help="train layers whose density is below the break-even measured for their shape with sparse (CSR) "
        "kernels: auto (on a CPU, jobs trained one by one) or off (default: auto)",
    )
    p.add_argument(
        "--batch-jobs",
        default="auto",
        help="train a level's independent jobs together: auto (where faster), off, or at most K per pass "
        "(default: auto)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress bars (default: on when stderr is a terminal)",
    )
    p.add_argument(
        "--metric",
        default="final_test_acc",
        choices=("final_test_acc", "best_test_acc"),
        help="accuracy shown in the table and plot (default: final_test_acc)",
    )


def _branch_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab branch``: its flags, their help and the list of branches all come from the branch registry."""
    intro = (
        "Ask a question of a finished IMP run without recomputing it: each branch starts from a level's ticket, "
        "changes one thing, and trains with the trunk's data order and budget. Rows join the run's results.csv "
        "(options in the branch name); running the same branch again does no work."
    )
    listing = []
    for branch in B.BRANCHES.values():
        usage = " ".join([branch.name, *(f"[{_flag(o.name)} {o.name.upper()}]" for o in branch.options.values())])
        listing.append(
            textwrap.fill(f"{usage}: {branch.summary}", 100, initial_indent="  ", subsequent_indent="      ")
        )
    b = sub.add_parser(
        "branch",
        help="run a branch off finished levels of an IMP run (fine-tuning, LR rewinding, perturbations, ...)",
        description=textwrap.fill(intro, 100) + "\n\nbranches:\n" + "\n".join(listing),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("run_dir")
    b.add_argument("name", help="the branch")
    b.add_argument("--levels", help="comma-separated levels (default: every finished level)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    b.add_argument("--tensorboard", metavar="DIR", help="write every job's scalars for TensorBoard under DIR")
    b.add_argument("--sparse-kernels", default="auto", choices=("auto", "off"), help="as for imp (default: auto)")
    b.add_argument(
        "--batch-jobs",
        default="auto",
        help="train a level's independent jobs together: auto (where faster), off, or at most K per pass "
        "(default: auto)",
    )
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--metric", default="final_test_acc", choices=("final_test_acc", "best_test_acc"))
    group = b.add_argument_group("branch options (each branch takes its own; NAME: what it means there)")
    for name, text in B.option_help().items():
        group.add_argument(_flag(name), dest=f"option.{name}", metavar=name.upper(), help=text.replace("%", "%%"))


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
    _run_flags(eb)
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
    _add_config_flags(eb, mode=False)


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
    a.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line answered in one line (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ticketlab: error: {message} (see `{self.prog} --help`)\n")


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ticketlab", description="Find, train and study lottery tickets (sparse trainable subnetworks)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "imp",
        help="iterative magnitude pruning with rewinding, and baselines",
        description="Train, prune, rewind and retrain level after level, beside the random re-init and random "
        f"pruning baselines. With no flags: the default MNIST-1D experiment (preset {P.DEFAULT_PRESET}, whose "
        "values the defaults below show; a --preset or --config replaces them).",
    )
    _run_flags(p)
    _add_config_flags(p)
    at_init = [n for n in S.names() if S.get(n).at_init_default]  # `ticketlab criteria` scores these at init
    c = sub.add_parser(
        "criteria",
        help="compare pruning criteria: each pruned once to a few densities, then trained",
        description="Prune with each criterion straight to each density and train the result: "
        f"{', '.join(at_init)} at initialisation, the after-training criteria from the trained dense network "
        "(one-shot, rewound). Each pair is an ordinary resumable run; the comparison's table and plot go in its own "
        "directory. Config flags as for `imp`.",
    )
    _run_flags(c)
    c.add_argument("--criteria", default="all", help="comma-separated criteria, or all (default: all)")
    c.add_argument("--densities", default="0.2,0.05,0.01", help="comma-separated densities (default: 0.2,0.05,0.01)")
    c.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "at-init", "one-shot"),
        help=f"auto: {'/'.join(at_init)} at init, the others one-shot after training (default: auto)",
    )
    _add_config_flags(c, mode=False)
    dj = sub.add_parser(
        "disjoint",
        help="disjoint tickets: find a ticket, forbid its weights, search again, N times",
        description="Find a ticket by IMP (the configured levels), forbid its weights, and search again in the "
        "weights left, until --tickets tickets are found. Each round is a resumable run whose level 0 trains the "
        "network without the tickets found so far. Config flags as for `imp` (one replicate; no random-pruning "
        "baseline).",
    )
    _run_flags(dj)
    dj.add_argument("--tickets", type=int, default=3, help="how many disjoint tickets to find (default: 3)")
    dj.add_argument(
        "--exclude",
        default="forbid",
        choices=("forbid", "reinit"),
        help="forbid earlier tickets' weights, or re-initialise them and let the search use them again "
        "(default: forbid)",
    )
    _add_config_flags(dj)
    e = sub.add_parser(
        "export",
        help="save a ticket (structured or not) as a smaller dense model (torch.export .pt2)",
        description="Remove the neurons and filters a ticket pruned, or left dead (no kept weight reads them, or "
        "none feeds them), and save the smaller network with "
        "torch.export; its outputs equal the masked network's (checked on test inputs before saving). "
        "Load it with torch.export.load(PATH).module().",
    )
    e.add_argument("run_dir")
    e.add_argument("--level", type=int, required=True, help="the level whose ticket to export")
    e.add_argument("--replicate", type=int, default=0)
    e.add_argument(
        "--weights",
        default="final",
        choices=("final", "rewound"),
        help="final: the ticket as trained; rewound: the weights it trains from (default: final)",
    )
    e.add_argument("--out", help="the .pt2 file (default: RUN_DIR/ticket-level-N.pt2)")
    _branch_parser(sub)
    _early_bird_parser(sub)
    _align_parser(sub)
    _analyze_parser(sub)
    sub.add_parser("presets", help="list the named presets")
    sub.add_parser("models", help="list the registered models")
    sub.add_parser("datasets", help="list the datasets")
    sw = sub.add_parser(
        "sweep",
        help="run a grid of configs (each an ordinary resumable run) on local processes or a Ray cluster",
        description="Expand GRID.yaml (base: a preset and/or config sections; grid: field name -> list of values) "
        "into runs, run the ones not finished, and summarise them in OUT/sweep-<hash>/summary.csv.",
    )
    sw.add_argument("grid", help="YAML or JSON file with `base:` (optional) and `grid:`")
    sw.add_argument("--executor", default="local", choices=SW.EXECUTORS, help="local processes or ray (default: local)")
    sw.add_argument("--workers", type=int, default=1, help="local executor: processes running runs (default: 1)")
    sw.add_argument("--address", help="ray executor: the Ray head's address (default: start a local Ray)")
    sw.add_argument("--out", default="runs", help="directory holding run directories (default: runs)")
    sw.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, ... (default: auto)")
    sw.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="the sweep's bar")
    _stability_parser(sub)
    r = sub.add_parser("report", help="print the table and redraw the plot of a run directory")
    r.add_argument("run_dir")
    r.add_argument("--metric", default="final_test_acc", choices=("final_test_acc", "best_test_acc"))
    r.add_argument("--html", action="store_true", help="also write one self-contained HTML page (RUN_DIR/report.html)")
    r.add_argument("--out", help="the HTML file, with --html (default: RUN_DIR/report.html)")
    return parser


def config_from_args(args: argparse.Namespace) -> C.ExperimentConfig:
    """Defaults, then the preset, then the config file, then flags."""
    merged: dict[str, Any] = P.preset(args.preset or P.DEFAULT_PRESET)
    if args.config:
        merged = C.merge(merged, load_file(args.config))
    flags: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            flags.setdefault(section, {})[name] = value
    return C.from_dict(C.merge(merged, flags))


def _imp(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run = imp(
        cfg,
        out=args.out,
        **_training(args),
    )
    rows = run.results(cfg, quiet=True)
    print(imp_table(rows, args.metric))
    print("\n" + cost_table(rows))
    png = imp_plot(rows, run.plot_file, args.metric, title=run.name)
    print(f"\nrun directory: {run.path}\nresults: {run.results_file}\nplot: {png}")
    print(f"report: {html_report(run.path)}")
    return 0


def _training(args: argparse.Namespace) -> dict[str, Any]:
    """How a command's jobs train, from its flags: device, progress bars (default: when stderr is a terminal),
    batching, sparse kernels, TensorBoard."""
    return {
        "device": args.device,
        "progress": sys.stderr.isatty() if args.progress is None else args.progress,
        "batch_jobs": args.batch_jobs,
        "sparse_kernels": args.sparse_kernels,
        "tensorboard": args.tensorboard,
    }


def _criteria(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    criteria = S.names() if args.criteria == "all" else [c.strip() for c in args.criteria.split(",") if c]
    try:
        densities = [float(d) for d in args.densities.split(",") if d.strip()]
    except ValueError:
        raise TicketlabError(f"--densities: cannot read {args.densities!r}; write e.g. 0.2,0.05,0.01") from None
    compare_criteria.configs(cfg, criteria, densities, args.mode)  # every check, before the first run starts
    where, rows = compare_criteria.compare(
        cfg,
        criteria,
        densities,
        mode=args.mode,
        out=args.out,
        **_training(args),
    )
    print(criteria_table(rows, args.metric))
    print(f"\ncomparison: {where / 'criteria.csv'}\nplot: {where / 'criteria.png'}")
    return 0


def _branch(args: argparse.Namespace) -> int:
    options = {k.removeprefix("option."): v for k, v in vars(args).items() if k.startswith("option.") and v is not None}
    try:
        levels = [int(x) for x in args.levels.split(",")] if args.levels else None
    except ValueError:
        raise TicketlabError(f"--levels: cannot read {args.levels!r}; write e.g. 1,3,5") from None
    rows = B.run_branch(
        Path(args.run_dir),
        args.name,
        levels=levels,
        options=options,
        **_training(args),
    )
    print(imp_table(rows, args.metric))
    print("\n" + cost_table(rows))
    print(f"\nresults: {Path(args.run_dir) / 'results.csv'}")
    print(f"report: {html_report(Path(args.run_dir))}")
    return 0


def _stability(args: argparse.Namespace) -> int:
    try:
        levels = [int(x) for x in args.levels.split(",")] if args.levels else None
    except ValueError:
        raise TicketlabError(f"--levels: cannot read {args.levels!r}; write e.g. 0,2") from None
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
    try:
        levels = [int(x) for x in args.levels.split(",")] if args.levels else None
    except ValueError:
        raise TicketlabError(f"--levels: cannot read {args.levels!r}; write e.g. 1,3,5") from None
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


def _disjoint(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    where, rows = disjoint(
        cfg,
        args.tickets,
        exclude=args.exclude,
        out=args.out,
        **_training(args),
    )
    print(disjoint_table(rows))
    print(f"\nrounds: {where / 'disjoint.csv'}")
    return 0


def _early_bird(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    options = EB.Options(args.density, args.every, args.fifo, args.epsilon, args.rule, args.start)
    run, rows = EB.early_bird(cfg, options, against=args.against, out=args.out, **_training(args))
    print(EB.table(rows))
    print(f"\nrun directory: {run.path}\nearly-bird: {run.path / 'early_bird.csv'}\nresults: {run.results_file}")
    return 0


def _export(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.run_dir) / f"ticket-level-{args.level}.pt2"
    info = export_ticket(Path(args.run_dir), args.level, out, replicate=args.replicate, weights=args.weights)
    print(
        f"exported {out}: {info['params_after']:,} parameters, {info['nonzero']:,} of them nonzero (masked "
        f"network: {info['params_before']:,}); largest output difference on {info['checked']} test inputs: "
        f"{info['max_diff']:.2e}"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    specs = SW.load_grid(args.grid)  # every entry checked before the first run starts
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    where, rows = SW.run_sweep(
        specs,
        out=args.out,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        device=args.device,
        progress=progress,
    )
    print(SW.summary_table(rows, list(specs[0].values)))
    print(f"\nsummary: {where / 'summary.csv'}")
    return 0


def _listing(items: dict[str, str]) -> None:
    """One line per name, descriptions aligned."""
    width = max(map(len, items)) + 2
    for name, desc in items.items():
        print(f"{name:<{width}}{desc}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "imp":
            return _imp(args)
        if args.command == "criteria":
            return _criteria(args)
        if args.command == "export":
            return _export(args)
        if args.command == "branch":
            return _branch(args)
        if args.command == "stability":
            return _stability(args)
        if args.command == "align":
            return _align(args)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "disjoint":
            return _disjoint(args)
        if args.command == "early-bird":
            return _early_bird(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "presets":
            _listing({name: desc for name, (desc, _) in P.PRESETS.items()})
            return 0
        if args.command == "models":
            _listing(model_names())
            return 0
        if args.command == "datasets":
            _listing(dataset_names())
            return 0
        if args.command == "report":
            text, png = report(Path(args.run_dir), args.metric)
            print(text)
            print(f"\nplot: {png}")
            if args.html:
                print(f"report: {html_report(Path(args.run_dir), args.out)}")
            return 0
        parser.print_help()
        return 2
    except TicketlabError as e:
        print(f"ticketlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output directory that cannot be written, a full disk
        print(
            f"ticketlab: error: {e.strerror or e}: {e.filename or ''} (nothing finished is lost; fix it and run "
            "the same command again)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("ticketlab: interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130


def entry() -> None:
    code = main()
    # The interpreter's last garbage collection walks every object torch created (0.4-0.9 s here, measured by
    # benchmarks/level_time.py); nothing is left to finalise that needs it, so move them out of its reach.
    gc.freeze()
    sys.exit(code)
