"""The ``ticketlab`` command. Flags are generated from the config dataclasses, so each has a help string.

User errors print one line and exit with status 2, with no traceback and nothing written.
"""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
from pathlib import Path
from typing import NoReturn

from ticketlab import branches as B
from ticketlab import cli_grokking as grokking
from ticketlab import cli_mechanisms as mechanisms
from ticketlab import cli_strong as strong
from ticketlab import cli_study as study
from ticketlab import compare_criteria
from ticketlab import presets as P
from ticketlab import scores as S
from ticketlab import sweep as SW
from ticketlab.cli_flags import add_config_flags, config_from_args, flag, parse_levels, run_flags, training_flags
from ticketlab.data import dataset_names
from ticketlab.disjoint import disjoint
from ticketlab.errors import TicketlabError
from ticketlab.export import export_ticket
from ticketlab.imp import imp
from ticketlab.models import model_names
from ticketlab.report import report
from ticketlab.report.html import html_report
from ticketlab.report.plots import imp_plot
from ticketlab.report.tables import cost_table, criteria_table, disjoint_table, imp_tables


def _branch_parser(sub: argparse._SubParsersAction) -> None:
    """``ticketlab branch``: its flags, their help and the list of branches all come from the branch registry."""
    intro = (
        "Ask a question of a finished IMP run without recomputing it: each branch starts from a level's ticket, "
        "changes one thing, and trains with the trunk's data order and budget. Rows join the run's results.csv "
        "(options in the branch name); running the same branch again does no work."
    )
    listing = []
    for branch in B.BRANCHES.values():
        usage = " ".join([branch.name, *(f"[{flag(o.name)} {o.name.upper()}]" for o in branch.options.values())])
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
        group.add_argument(flag(name), dest=f"option.{name}", metavar=name.upper(), help=text.replace("%", "%%"))


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line answered in one line (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ticketlab: error: {message} (see `{self.prog} --help`)\n")


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
    run_flags(p)
    add_config_flags(p)
    at_init = [n for n in S.names() if S.get(n).at_init_default]  # `ticketlab criteria` scores these at init
    c = sub.add_parser(
        "criteria",
        help="compare pruning criteria: each pruned once to a few densities, then trained",
        description="Prune with each criterion straight to each density and train the result: "
        f"{', '.join(at_init)} at initialisation, the after-training criteria from the trained dense network "
        "(one-shot, rewound). Each pair is an ordinary resumable run; the comparison's table and plot go in its own "
        "directory. Config flags as for `imp`.",
    )
    run_flags(c)
    c.add_argument("--criteria", default="all", help="comma-separated criteria, or all (default: all)")
    c.add_argument("--densities", default="0.2,0.05,0.01", help="comma-separated densities (default: 0.2,0.05,0.01)")
    c.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "at-init", "one-shot"),
        help=f"auto: {'/'.join(at_init)} at init, the others one-shot after training (default: auto)",
    )
    add_config_flags(c, mode=False)
    dj = sub.add_parser(
        "disjoint",
        help="disjoint tickets: find a ticket, forbid its weights, search again, N times",
        description="Find a ticket by IMP (the configured levels), forbid its weights, and search again in the "
        "weights left, until --tickets tickets are found. Each round is a resumable run whose level 0 trains the "
        "network without the tickets found so far. Config flags as for `imp` (one replicate; no random-pruning "
        "baseline).",
    )
    run_flags(dj)
    dj.add_argument("--tickets", type=int, default=3, help="how many disjoint tickets to find (default: 3)")
    dj.add_argument(
        "--exclude",
        default="forbid",
        choices=("forbid", "reinit"),
        help="forbid earlier tickets' weights, or re-initialise them and let the search use them again "
        "(default: forbid)",
    )
    add_config_flags(dj)
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
    study.add_parsers(sub)
    strong.add_parsers(sub)
    grokking.add_parsers(sub)
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
    mechanisms.add_parsers(sub)
    r = sub.add_parser("report", help="print the table and redraw the plot of a run directory")
    r.add_argument("run_dir")
    r.add_argument("--metric", default="final_test_acc", choices=("final_test_acc", "best_test_acc"))
    r.add_argument("--html", action="store_true", help="also write one self-contained HTML page (RUN_DIR/report.html)")
    r.add_argument("--out", help="the HTML file, with --html (default: RUN_DIR/report.html)")
    return parser


def _imp(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run = imp(
        cfg,
        out=args.out,
        **training_flags(args),
    )
    rows = run.results(cfg, quiet=True)
    print(imp_tables(rows, args.metric))
    print("\n" + cost_table(rows))
    png = imp_plot(rows, run.plot_file, args.metric, title=run.name)
    print(f"\nrun directory: {run.path}\nresults: {run.results_file}\nplot: {png}")
    print(f"report: {html_report(run.path)}")
    return 0


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
        **training_flags(args),
    )
    print(criteria_table(rows, args.metric))
    print(f"\ncomparison: {where / 'criteria.csv'}\nplot: {where / 'criteria.png'}")
    return 0


def _branch(args: argparse.Namespace) -> int:
    options = {k.removeprefix("option."): v for k, v in vars(args).items() if k.startswith("option.") and v is not None}
    levels = parse_levels(args.levels)
    rows = B.run_branch(
        Path(args.run_dir),
        args.name,
        levels=levels,
        options=options,
        **training_flags(args),
    )
    print(imp_tables(rows, args.metric))
    print("\n" + cost_table(rows))
    print(f"\nresults: {Path(args.run_dir) / 'results.csv'}")
    print(f"report: {html_report(Path(args.run_dir))}")
    return 0


def _disjoint(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    where, rows = disjoint(
        cfg,
        args.tickets,
        exclude=args.exclude,
        out=args.out,
        **training_flags(args),
    )
    print(disjoint_table(rows))
    print(f"\nrounds: {where / 'disjoint.csv'}")
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
        if args.command in study.COMMANDS:
            return study.COMMANDS[args.command](args)
        if args.command in strong.COMMANDS:
            return strong.COMMANDS[args.command](args)
        if args.command in grokking.COMMANDS:
            return grokking.COMMANDS[args.command](args)
        if args.command == "disjoint":
            return _disjoint(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command in mechanisms.COMMANDS:
            return mechanisms.COMMANDS[args.command](args)
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
            if args.out and not args.html:
                raise TicketlabError(f"report --out {args.out} names the HTML file; add --html")
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
