"""One self-contained HTML page for a run directory: every figure an inline SVG, no script, no network, so the file
opens from disk anywhere and can be mailed as it is.

The page is a list of panels. A panel is a function ``panel(run, rows) -> str | None`` (``rows``: the run's
``results.csv`` rows, read back from its verified records) that returns an HTML fragment, or None when the run
lacks its data; it joins the page by the ``@panel`` decorator, in registration order. A later analysis adds its
panel the same way (import its module before calling :func:`html_report`) and never edits the page code.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ticketlab
from ticketlab import masks as M
from ticketlab.components import component_table, components, shows_components
from ticketlab.data import load_configured
from ticketlab.errors import TicketlabError
from ticketlab.models import model_arguments
from ticketlab.problem import registry_problem
from ticketlab.report.plots import (
    criteria_figure,
    curves_figure,
    density_heatmap,
    early_stop_figure,
    figure_svg,
    imp_figure,
)
from ticketlab.report.tables import (
    LABELS,
    SPREAD,
    branch_order,
    cost_table,
    criteria_table,
    disjoint_table,
    imp_summary,
    imp_table,
    mean_std,
)
from ticketlab.rundir import RESULT_COLUMNS, RunDir
from ticketlab.store import DamagedFile, atomic_write_text, read_csv, read_record

Panel = Callable[[RunDir, list[dict[str, Any]]], "str | None"]
PANELS: list[tuple[str, Panel]] = []  # (title, function), in page order


def panel(title: str) -> Callable[[Panel], Panel]:
    """Register ``fn(run, rows) -> str | None`` as a panel of the page, shown under ``title`` when it returns
    HTML."""

    def register(fn: Panel) -> Panel:
        PANELS.append((title, fn))
        return fn

    return register


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def inline_png(path: Path, alt: str) -> str:
    """A PNG the run wrote, inline (a data: URI: the page stays one self-contained file); '' when it is missing."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def html_table(head: list[str], lines: list[list[Any]], cls: str = "") -> str:
    """An HTML table; cells are escaped."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>" for line in lines)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _config(run: RunDir) -> dict[str, Any] | None:
    try:
        return run.saved()["config"]
    except TicketlabError:
        return None


def imp_jobs(run: RunDir) -> bool:
    """Whether the run's jobs are IMP levels and branches: not those of a supermask or grokking run (their own
    panels, in report/strong_panels.py and report/grokking_report.py, read their results.csv)."""
    try:
        return not {"supermask", "grokking"} & set(run.saved())
    except TicketlabError:
        return True


def title(run: RunDir) -> str:
    """What the run is, for a reader: model, dataset, replicates, levels and pruning (not the hash)."""
    cfg = _config(run)
    if cfg is None:
        return f"ticketlab report: {run.name}"
    model, data, imp, prune = cfg["model"], cfg["data"], cfg["imp"], cfg["prune"]
    if "grokking" in run.saved():
        return f"{model['model']} on {data['dataset']}: grokking tickets, {imp['replicates']} replicate(s)"
    if not imp_jobs(run):
        return (
            f"{model['model']} on {data['dataset']}: supermasks over frozen weights, {imp['replicates']} replicate(s)"
        )
    return (
        f"{model['model']} on {data['dataset']}: {imp['replicates']} replicate(s), {imp['levels']} levels of "
        f"{prune['strategy']} {prune['criterion']} pruning ({100 * prune['fraction']:g}% per level)"
    )


# ---------------------------------------------------------------------------------------------------- panels


@panel("Accuracy vs weights remaining")
def accuracy_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    if not rows:
        return None
    svg = figure_svg(imp_figure(rows, "final_test_acc", title="final test accuracy", bands=True))
    return (
        f"<p>Ticket solid, baselines (and branches) dashed; bands: {SPREAD}.</p>{svg}"
        + pre(imp_table(rows, "final_test_acc"))
        + pre(imp_table(rows, "best_test_acc"))
    )


@panel("Matching: does the ticket match the dense network?")
def matching_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    summary = imp_summary([r for r in rows if r["branch"] == "ticket"])
    dense = summary.get(0, {}).get("branches", {}).get("ticket")
    if dense is None or len(summary) < 2:
        return None
    lines = []
    for level, s in summary.items():
        if level == 0:
            continue
        t = s["branches"]["ticket"]
        band = dense.std if dense.n > 1 else 0.0
        verdict = "better" if t.mean > dense.mean else "matching" if t.mean >= dense.mean - band else "not matching"
        lines.append([level, f"{100 * s['density']:.2f}%", mean_std(t), t.n, verdict])
    note = (
        f"<p>Dense (level 0): {html.escape(mean_std(dense))}% (n={dense.n}). A ticket matches when its mean final "
        f"test accuracy is within one sample std (ddof=1) of the dense mean, or better"
        + ("" if dense.n > 1 else "; with one replicate there is no spread: only at least the dense mean matches")
        + ".</p>"
    )
    return note + html_table(["level", "weights left", "ticket test acc (%)", "n", "verdict"], lines, "verdict")


@panel("Early-stop iteration vs weights remaining")
def early_stop_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    fig = early_stop_figure(rows)
    text = "The evaluation step with the lowest validation loss (test loss when there is no validation split)."
    return None if fig is None else f"<p>{text}</p>" + figure_svg(fig)


def _metrics(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


@panel("Training curves per level (ticket)")
def curves_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    values: dict[int, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        if row["branch"] != "ticket":
            continue
        for entry in _metrics(run.job(int(row["replicate"]), int(row["level"]), "ticket").metrics):
            for key in ("test_acc", "test_loss"):
                if key in entry:
                    values[int(row["level"])][key][int(entry["step"])].append(float(entry[key]))
    if not values:
        return None
    curves = {
        lv: {k: [(step, float(np.mean(v))) for step, v in sorted(by_step.items())] for k, by_step in keys.items()}
        for lv, keys in values.items()
    }
    densities = {lv: s["density"] for lv, s in imp_summary(rows).items()}
    return figure_svg(curves_figure(curves, densities))


@panel("Per-layer density per level")
def density_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    densities = {}
    for row in rows:
        if row["branch"] == "ticket" and int(row["replicate"]) == 0:
            try:
                record = read_record(run.job(0, int(row["level"]), "ticket").result)
            except (DamagedFile, OSError):
                continue
            if record.get("layer_densities"):
                densities[int(row["level"])] = record["layer_densities"]
    return figure_svg(density_heatmap(densities)) if densities else None


@panel("Per-component density of the last ticket (replicate 0)")
def component_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    """The sparsest ticket's mask by component (embedding, attention, recurrent, mlp, output), for a registered
    sequence model (one whose factory takes ``vocab``), rebuilt from the run's config and data."""
    levels = [int(r["level"]) for r in rows if r["branch"] == "ticket" and int(r["replicate"]) == 0]
    try:
        if not levels or run.user_model or "vocab" not in model_arguments(run.config().model.model):
            return None
        cfg = run.config()
        data = load_configured(cfg.data)
        model = registry_problem(cfg, data).init_model(0)
        mask = M.load_mask(run.level(0, max(levels)).mask)
    except (TicketlabError, DamagedFile, OSError):
        return None
    example = data.train.x[:2]
    if not shows_components(components(model, list(mask), example).values()):
        return None
    return pre(component_table(model, mask, example))


@panel("Results (every job, as results.csv)")
def results_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    if not run.results_file.exists():
        return None
    csv_rows = read_csv(run.results_file)
    columns = [c for c in RESULT_COLUMNS if csv_rows and c in csv_rows[0]]
    if csv_rows and not imp_jobs(run):  # a supermask run's own columns (width, method, k, ...)
        columns = list(csv_rows[0])
    lines = [[r[c] for c in columns] for r in csv_rows]
    return (
        f"<details><summary>{len(lines)} {'jobs' if imp_jobs(run) else 'rows'} (click to open)</summary>"
        + html_table(columns, lines, "results")
        + "</details>"
    )


@panel("Pruning criteria compared")
def criteria_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    if not (run.path / "criteria.csv").exists():
        return None
    crit = read_csv(run.path / "criteria.csv")
    return figure_svg(criteria_figure(crit)) + pre(criteria_table(crit))


@panel("Disjoint tickets, round by round")
def disjoint_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    path = run.path / "disjoint.csv"
    return pre(disjoint_table(read_csv(path))) if path.exists() else None


@panel("What tickets share (ticketlab analyze)")
def analysis_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    parts = []
    for name, what in (
        (
            "analysis.csv",
            "sign preservation rho, gradient and trajectory alignment, densities; one row per replicate "
            "and level (the mean per level over replicates first)",
        ),
        ("overlap.csv", "mask overlap (Jaccard) with other runs' levels of nearest density; layer 'all': whole mask"),
    ):
        if not (run.path / name).exists():
            continue
        table = read_csv(run.path / name)
        if not table:
            continue
        columns = list(table[0])
        parts.append(f"<p>{html.escape(name)}: {html.escape(what)}.</p>")
        if name == "analysis.csv":
            measures = columns[2:]
            by_level = defaultdict(list)
            for r in table:
                by_level[int(r["level"])].append(r)
            lines = []
            for lv, group in sorted(by_level.items()):
                cells = []
                for m in measures:
                    v = np.array([float(r[m]) for r in group if r[m] not in ("", "nan")])
                    spread = f" ± {v.std(ddof=1):.4f}" if v.size > 1 else ""  # sample std, ddof=1
                    cells.append(f"{v.mean():.4f}{spread}" if v.size else "-")
                lines.append([lv, *cells, len(group)])
            parts.append(html_table(["level", *measures, "n"], lines, "analysis"))
        lines = [[r[c] for c in columns] for r in table]
        parts.append(
            f"<details><summary>{len(lines)} rows of {html.escape(name)} (click to open)</summary>"
            + html_table(columns, lines, "analysis")
            + "</details>"
        )
    return "".join(parts) or None


@panel("Capacity: generalisation gap vs weights left (ticketlab analyze --capacity)")
def capacity_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    path = run.path / "capacity.csv"
    table = read_csv(path) if path.exists() else []
    if not table:
        return None

    def cell(r: dict[str, str], key: str, scale: float = 1.0) -> str:
        mean, std = r[key], r.get(f"{key}_std", "")
        if mean == "":
            return "-"
        return f"{scale * float(mean):.2f}" + (f" ± {scale * float(std):.2f}" if std not in ("", "nan") else "")

    lines = [
        [r["level"], r["branch"], f"{100 * float(r['density']):.2f}%", f"{float(r['kept']):.0f}",
         f"{float(r['w_log_w']):.0f}", cell(r, "gap", 100.0), cell(r, "distance"), r["n"]]
        for r in table
    ]  # fmt: skip
    head = ["level", "branch", "weights left", "W", "W ln W", "gap (pp)", "learning distance", "n"]
    note = (
        "<p>Generalisation gap = train acc - final test acc (percentage points); W = kept weights; W ln W a "
        f"VC-style proxy (natural log); learning distance ||theta_T - theta_0||_2. Mean ± {SPREAD}.</p>"
    )
    return note + html_table(head, lines, "capacity")


@panel("Compute spent")
def cost_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    return pre(cost_table(rows)) if rows else None


@panel("Config, versions and wall times")
def config_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    saved = _config(run)
    times = defaultdict(list)
    for row in rows:
        if row.get("wall_time_s") not in (None, ""):
            times[(int(row["level"]), row["branch"])].append(float(row["wall_time_s"]))
    branches = branch_order(imp_summary(rows)) if rows else []
    levels = sorted({lv for lv, _ in times})
    cell = {k: f"{sum(t):.2f} ({len(t)})" for k, t in times.items()}
    lines = [[lv] + [cell.get((lv, b), "-") for b in branches] for lv in levels]
    head = ["level"] + [f"{LABELS.get(b, b)}: wall time, s (jobs)" for b in branches]
    used = defaultdict(int)  # what the jobs trained on, as their records say (ticketlab >= 0.2's records)
    for record in run.path.glob("replicate_*/level_*/*/result.json"):
        try:
            used[json.loads(record.read_text()).get("trained_on") or "not recorded (an older ticketlab)"] += 1
        except (OSError, ValueError):
            continue
    versions = "; ".join(f"{what} ({n} jobs)" for what, n in sorted(used.items()))
    page = f"ticketlab {ticketlab.__version__}, torch {torch.__version__}, Python {platform.python_version()}"
    return (
        f"<p>Trained on: {html.escape(versions or '-')}</p><p>This page: {html.escape(page)} ({sys.platform})</p>"
        f"<p>Run directory: <code>{html.escape(str(run.path))}</code></p>"
        + ("" if saved is None else pre(json.dumps(saved, indent=2, sort_keys=True)))
        + ("" if not lines else "<p>Wall time per level, all replicates summed:</p>" + html_table(head, lines))
    )


# ---------------------------------------------------------------------------------------------------- page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; margin-top: 2em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
table { border-collapse: collapse; font-size: .85em; } td, th { border: 1px solid #ddd; padding: .2em .5em; }
td { text-align: right; } svg { max-width: 100%; height: auto; }
"""


def render(run_dir: str | Path) -> str:
    """The HTML page of a run directory (a run, or a criteria comparison), one panel per registered panel that has
    data. TicketlabError when the directory holds nothing to report."""
    run = RunDir(Path(run_dir))
    rows = run.rows(quiet=True) if run.config_file.exists() and imp_jobs(run) else []  # a supermask run: none
    found = rows or any((run.path / f).exists() for f in ("criteria.csv", "disjoint.csv"))
    if not found and (imp_jobs(run) or not run.results_file.exists()):
        raise TicketlabError(f"{run.path}: nothing to report yet (no finished job, criteria.csv or disjoint.csv)")
    sections = []
    for name, fn in PANELS:
        body = fn(run, rows)
        if body:
            sections.append(f"<section><h2>{html.escape(name)}</h2>\n{body}\n</section>")
    head = title(run)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(head)}</title><style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(head)}</h1>\n"
        f"<p>Run <code>{html.escape(run.name)}</code>; accuracies in %, {SPREAD} over replicates.</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def html_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the page of :func:`render` to ``out`` (default ``RUN_DIR/report.html``), atomically; its path."""
    path = Path(out) if out else Path(run_dir) / "report.html"
    atomic_write_text(path, render(run_dir))
    return path
