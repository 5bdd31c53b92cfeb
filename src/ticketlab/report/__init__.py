"""Reports of finished (or stopped) work: ``report(dir)`` gives the table and redraws the plot of a run directory or
of a criteria comparison (``criteria.csv``). The tables are in ``report.tables``, the plots in ``report.plots``; the
workflows import those, never the other way round.
"""

from __future__ import annotations

from pathlib import Path

from ticketlab.config import from_dict
from ticketlab.errors import TicketlabError
from ticketlab.imp import collect_results
from ticketlab.report.plots import criteria_plot, imp_plot
from ticketlab.report.tables import criteria_table, imp_table
from ticketlab.store import read_csv, read_json


def report(run_dir: Path, metric: str = "final_test_acc") -> tuple[str, Path]:
    """Table and plot for a run directory, finished or not (rows come from the jobs that completed), or for a
    comparison of criteria."""
    run_dir = Path(run_dir)
    if (run_dir / "criteria.csv").exists():  # a comparison of criteria (`ticketlab criteria`)
        rows = read_csv(run_dir / "criteria.csv")
        return criteria_table(rows, metric), criteria_plot(rows, run_dir / "criteria.png", metric)
    if not (run_dir / "config.json").exists():
        raise TicketlabError(f"{run_dir} has no config.json: is it a ticketlab run directory?")
    rows = collect_results(run_dir, from_dict(read_json(run_dir / "config.json")["config"]))
    if not rows:
        raise TicketlabError(f"{run_dir}: no job has finished yet")
    return imp_table(rows, metric), imp_plot(rows, run_dir / "plot.png", metric, title=run_dir.name)
