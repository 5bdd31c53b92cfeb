"""Reports of finished (or stopped) work: ``report(dir)`` gives the table and redraws the plot of a run directory or
of a criteria comparison (``criteria.csv``). The tables are in ``report.tables``, the plots in ``report.plots``; the
workflows import those, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ticketlab.errors import TicketlabError
from ticketlab.report.plots import criteria_plot, imp_plot
from ticketlab.report.tables import cost_table, criteria_table, imp_tables
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv

# other kinds of run: fn(run_dir, metric) -> (table, plot), or None when the directory is not theirs (report/
# strong_panels.py adds the supermask run's; `import ticketlab` imports it)
REPORTERS: list[Callable[[Path, str], tuple[str, Path] | None]] = []


def report(run_dir: Path, metric: str = "final_test_acc") -> tuple[str, Path]:
    """Table and plot for a run directory, finished or not (rows come from the jobs that completed), or for a
    comparison of criteria."""
    run_dir = Path(run_dir)
    if (run_dir / "criteria.csv").exists():  # a comparison of criteria (`ticketlab criteria`)
        rows = read_csv(run_dir / "criteria.csv")
        return criteria_table(rows, metric), criteria_plot(rows, run_dir / "criteria.png", metric)
    for reporter in REPORTERS:
        found = reporter(run_dir, metric)
        if found is not None:
            return found
    run = RunDir(run_dir)
    rows = run.rows()  # a damaged job is left out, with a warning; the same imp command computes it again
    if not rows:
        raise TicketlabError(f"{run_dir}: no job has finished yet")
    return imp_tables(rows, metric) + "\n\n" + cost_table(rows), imp_plot(rows, run.plot_file, metric, title=run.name)
