"""HTML report panels of what makes a ticket win (issue 17), each shown when its file is in the run directory:
signal propagation (``analyze --signal``: ``signal.csv``, ``signal_sparse_aware.csv``), the sanity checks of
pruning at init (``ticketlab sanity``: ``sanity.csv``) and the rewind-sparsity model (``analyze --rewind-model``:
``rewind_fit.json``, ``rewind_model.png``). Importing this module (``import ticketlab`` does) adds them to the page;
capacity's panel is in :mod:`ticketlab.report.html`."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ticketlab.analysis import rewind_model as RWM
from ticketlab.analysis import signal as SIG
from ticketlab.report.html import figure_svg, html_table, inline_png, panel, pre
from ticketlab.report.tables import SPREAD
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv


def _signal_rows(path: Path) -> list[dict[str, Any]]:
    """``signal.csv``'s rows with numbers as numbers (an empty cell: None)."""
    rows = []
    for r in read_csv(path):
        row: dict[str, Any] = {"replicate": int(r["replicate"]), "level": int(r["level"]), "layer": r["layer"]}
        row.update({k: None if r[k] == "" else float(r[k]) for k in SIG.COLUMNS[3:]})
        rows.append(row)
    return rows


@panel("Signal propagation at the rewind point (ticketlab analyze --signal)")
def signal_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    """Variance against depth per level (ticket, random mask, mean field), as drawn and with sparse-aware init."""
    parts = []
    for name, sparse_aware in ((SIG.SIGNAL_CSV, False), (SIG.SIGNAL_SPARSE_AWARE_CSV, True)):
        found = _signal_rows(run.path / name) if (run.path / name).exists() else []
        if found:
            parts.append(figure_svg(SIG.signal_figure(found, sparse_aware)))
    if not parts:
        return None
    note = (
        "<p>Second moment of each layer's pre-activations on one training batch, mean over replicates; the mean-field "
        "line is q_1 = d_1 q_0, q_{l+1} = d_{l+1} sigma_w^2 q_l / 2 (sigma_w^2 = 2), flat under sparse-aware init.</p>"
    )
    return note + "".join(parts)


@panel("Sanity checks of pruning at initialisation (ticketlab sanity)")
def sanity_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    """Per level and check: the ticket's and the check's final test accuracy and the drop."""
    path = run.path / "sanity.csv"
    table = read_csv(path) if path.exists() else []
    if not table:
        return None

    def cell(mean: str, std: str, n: str) -> str:
        spread = f" ± {100 * float(std):.2f}" if std not in ("", "nan") else ""
        return f"{100 * float(mean):.2f}{spread} (n={n})"

    lines = [
        [r["level"], f"{100 * float(r['density']):.2f}%", r["check"],
         cell(r["ticket_acc"], r["ticket_std"], r["ticket_n"]), cell(r["check_acc"], r["check_std"], r["check_n"]),
         f"{100 * float(r['drop']):+.2f}"]
        for r in table
    ]  # fmt: skip
    head = ["level", "weights left", "check", "ticket acc %", "check acc %", "drop (pp)"]
    note = (
        "<p>shuffle: each layer's mask permuted (same counts); reinit: the mask on a new initialisation; invert: the "
        f"highest-scored weights pruned instead. Mean ± {SPREAD}; drop = check - ticket.</p>"
    )
    return note + html_table(head, lines, "sanity")


@panel("Rewind-sparsity model (ticketlab analyze --rewind-model)")
def rewind_model_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    """The fitted parameters, predicted vs observed k* per level, and the fit's plot."""
    path = run.path / RWM.FIT_JSON
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        text = RWM.rewind_table(result)
    except (ValueError, KeyError, TypeError):  # a damaged file: say so rather than break the page
        return f"<p>{html.escape(str(path))} cannot be read; run `ticketlab analyze RUN --rewind-model` again.</p>"
    return pre(text) + inline_png(run.path / RWM.MODEL_PNG, "accuracy vs rewind step, and k*(s)")
