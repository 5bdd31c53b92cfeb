"""The flags commands share: one flag per config field, how a run trains (device, batching, kernels, TensorBoard,
progress), and the config a command line asks for (defaults, then the preset, then the config file, then flags)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ticketlab import config as C
from ticketlab import presets as P
from ticketlab import scores as S
from ticketlab.configfile import load_file
from ticketlab.errors import TicketlabError


def add_config_flags(parser: argparse.ArgumentParser, *, mode: bool = True) -> None:
    """One flag per config field; ``mode=False`` leaves out imp.mode (for a command that chooses it itself)."""
    # The defaults shown are what a run without --preset/--config uses: the default preset over the dataclasses.
    effective = C.from_dict(P.preset(P.DEFAULT_PRESET))
    for section in C.SECTIONS:
        group = parser.add_argument_group(f"{section} options")
        for f in C.fields_of(section):
            if (section, f.name) == ("imp", "mode"):
                if mode:
                    mode_flags(group, f.metadata["help"])
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


def mode_flags(group: argparse._ArgumentGroup, help_text: str) -> None:
    """``--mode`` and its shorthands ``--one-shot`` / ``--at-init`` (one of the three at most)."""
    one = group.add_mutually_exclusive_group()
    kwargs: dict[str, Any] = {"dest": "imp.mode", "default": None}
    one.add_argument("--mode", choices=C.MODES, help=f"{help_text} (default: iterative)", **kwargs)
    one.add_argument("--one-shot", action="store_const", const="one-shot", help="same as --mode one-shot", **kwargs)
    one.add_argument("--at-init", action="store_const", const="at-init", help="same as --mode at-init", **kwargs)


def run_flags(p: argparse.ArgumentParser) -> None:
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


def training_flags(args: argparse.Namespace) -> dict[str, Any]:
    """How a command's jobs train, from its flags: device, progress bars (default: when stderr is a terminal),
    batching, sparse kernels, TensorBoard."""
    return {
        "device": args.device,
        "progress": sys.stderr.isatty() if args.progress is None else args.progress,
        "batch_jobs": args.batch_jobs,
        "sparse_kernels": args.sparse_kernels,
        "tensorboard": args.tensorboard,
    }


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_levels(text: str | None, example: str = "1,3,5") -> list[int] | None:
    """``--levels``' comma-separated integers; None when not given. TicketlabError (one line) otherwise."""
    try:
        return [int(x) for x in text.split(",")] if text else None
    except ValueError:
        raise TicketlabError(f"--levels: cannot read {text!r}; write e.g. {example}") from None
