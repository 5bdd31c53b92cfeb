"""``ticketlab report`` of a grokking run (``ticketlab grokking``, issue 16): the summary table of its
``results.csv`` (:func:`ticketlab.grokking.table`) and its ``curves.png``. Importing this module (the CLI's
``cli_grokking`` does) adds the report to :data:`ticketlab.report.REPORTERS`."""

from __future__ import annotations

from pathlib import Path

from ticketlab.errors import TicketlabError
from ticketlab.grokking import summarize_rows, table
from ticketlab.report import REPORTERS
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv


def grokking_report(run_dir: Path, metric: str = "final_test_acc") -> tuple[str, Path] | None:
    """``ticketlab report`` of a grokking run: :func:`table` of its ``results.csv`` and ``curves.png``; None for any
    other directory. TicketlabError for another ``metric`` or before ``results.csv`` exists."""
    run = RunDir(Path(run_dir))
    try:
        if not run.config_file.exists() or "grokking" not in run.saved():
            return None
    except TicketlabError:
        return None
    if metric != "final_test_acc":
        raise TicketlabError(f"--metric {metric}: a grokking run reports final test accuracy; drop --metric")
    if not run.results_file.exists():
        raise TicketlabError(f"{run.path}: no results.csv yet; run the same `ticketlab grokking` command to finish it")
    rows = [
        {k: (v if k in ("mask", "note") else None if v == "" else float(v)) for k, v in raw.items()}
        for raw in read_csv(run.results_file)
    ]
    return table(summarize_rows(rows)), run.path / "curves.png"


REPORTERS.append(grokking_report)
