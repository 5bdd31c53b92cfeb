"""Sweeps: a grid of configs, each an ordinary hashed, resumable, locked run, spread over processes or a Ray cluster.

A grid file (YAML or JSON, read as safely as a config file)::

    base:                      # optional: a preset and/or config sections (or field names), like a config file
      preset: mnist1d-lth
      imp: {levels: 2, replicates: 1}
    grid:                      # config fields (as on the command line, or dotted: prune.fraction) to value lists
      fraction: [0.2, 0.5]
      strategy: [layerwise, global, erk]

``ticketlab sweep GRID.yaml`` expands the product into run specs in a fixed order (fields sorted by name, values in
the order given), checks every one before anything runs (one TicketlabError line for an unknown field, an empty
list, a bad value, or two entries that would share one run directory), and runs each with :func:`ticketlab.imp.imp`
into ``--out``. Runs already finished do no work, so running the sweep again resumes it. At the end one row per run
(its grid values, run directory, the ticket's accuracy at the last level as mean ± sample std with n, density,
training wall time) is printed and written to ``<out>/sweep-<hash>/summary.csv`` and ``summary.html`` (which
links each run's own HTML report, written into its run directory).

Executors: ``local`` runs ``--workers`` spawned processes, each training whole runs with max(1, cores // workers)
torch threads. ``ray`` (``pip install 'ticketlab[ray]'``) sends one Ray task per run (one CPU each) to
``ray.init(address=--address)`` or to a local Ray started for the sweep; a task whose worker dies is retried
(``max_retries``), which is safe because a run resumes from what it finished and its directory lock (flock,
released when a process dies) keeps two workers from writing one run. On several machines: give every machine
the same ``--out`` on a shared filesystem, start a Ray head and workers there, and pass ``--address`` of the head.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ticketlab import config as C
from ticketlab import presets as P
from ticketlab import scores as S
from ticketlab.config_fields import short_repr
from ticketlab.configfile import load_file
from ticketlab.data import dataset_names
from ticketlab.errors import TicketlabError
from ticketlab.imp import imp
from ticketlab.models import model_names
from ticketlab.report.html import html_report
from ticketlab.report.tables import Summary, mean_std, summarize
from ticketlab.rundir import RunDir, level_count
from ticketlab.store import atomic_write_text, write_csv

EXECUTORS = ("local", "ray")
RAY_RETRIES = 3  # a task whose worker or node dies is run again; the run resumes where it stopped
_WHERE = {f.name: s for s in C.SECTIONS for f in C.fields_of(s)}  # field name -> section (names are unique)


@dataclass(frozen=True)
class Spec:
    """One run of a sweep: its grid values (field name -> value, in the sweep's order) and its config."""

    values: dict[str, Any]
    config: C.ExperimentConfig

    @property
    def run_name(self) -> str:
        """The run directory's name under ``out``, as :func:`ticketlab.imp.imp` names it."""
        cfg = self.config
        return f"{cfg.model.model}-{cfg.data.dataset}-{cfg.run_hash()}"


def _canonical(key: Any) -> tuple[str, str]:
    """(section, field) of a grid or base key: ``fraction`` or ``prune.fraction``; ("", "preset") for presets."""
    if key == "preset":
        return "", "preset"
    if isinstance(key, str) and "." in key:
        section, name = key.split(".", 1)
        if section in C.SECTIONS and name in {f.name for f in C.fields_of(section)}:
            return section, name
    elif isinstance(key, str) and key in _WHERE:
        return _WHERE[key], key
    raise TicketlabError(
        f"sweep: unknown config field {short_repr(key)}; give a field name as on the command line (fraction, "
        "strategy, seed, ...), a dotted one (prune.fraction), or preset"
    )


def _nest(flat: dict[tuple[str, str], Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for (section, name), value in flat.items():
        nested.setdefault(section, {})[name] = value
    return nested


def _check_names(cfg: C.ExperimentConfig, label: str) -> None:
    """The names the config checks only where their registries live (models, datasets, criteria)."""
    for what, value, known in (
        ("model", cfg.model.model, model_names()),
        ("dataset", cfg.data.dataset, dataset_names()),
        ("criterion", cfg.prune.criterion, S.names()),
    ):
        if value not in known:
            raise TicketlabError(f"sweep entry {label}: unknown {what} {short_repr(value)}; known: {', '.join(known)}")


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_text(v)}" for k, v in values.items()) or "(base)"


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def expand(base: dict[str, Any], grid: dict[str, Any]) -> list[Spec]:
    """The run specs of a grid over ``base``, in a fixed order: fields sorted by (section, name), the product of
    their value lists in the order given. ``base``: ``preset`` and config sections or field names; ``grid``: field
    name (or ``preset``) -> non-empty list. Every entry is built and checked here; TicketlabError (one line) for an
    unknown field, an empty list, a bad value, or two entries sharing one run directory (grids over levels,
    replicates or baselines, which extend one run rather than make another)."""
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise TicketlabError("sweep: `base` and `grid` must be mappings (grid: field name -> list of values)")
    preset = base.get("preset", P.DEFAULT_PRESET)
    fixed: dict[str, Any] = {}
    for key, value in base.items():
        if key == "preset":
            continue
        if key in C.SECTIONS:
            if not isinstance(value, dict):
                raise TicketlabError(f"sweep: base section {key!r} must be a mapping of fields")
            fixed = C.merge(fixed, {key: value})
        else:
            section, name = _canonical(key)
            fixed = C.merge(fixed, {section: {name: value}})
    axes: dict[tuple[str, str], list[Any]] = {}
    for key, values in grid.items():
        where = _canonical(key)
        if where in axes:
            raise TicketlabError(f"sweep: grid field {where[1]!r} is given twice; keep one")
        if not isinstance(values, list) or not values:
            raise TicketlabError(f"sweep: grid field {key!r} needs a non-empty list of values, e.g. [0.2, 0.5]")
        axes[where] = values
    order = sorted(axes)
    specs, seen = [], {}
    for combo in itertools.product(*(axes[k] for k in order)):
        chosen = dict(zip(order, combo))
        values = {name: value for (_, name), value in chosen.items()}
        label = _label(values)
        name = chosen.pop(("", "preset"), preset)
        try:
            cfg = C.from_dict(C.merge(C.merge(P.preset(name), fixed), _nest(chosen)))
        except TicketlabError as e:
            raise TicketlabError(f"sweep entry {label}: {e}") from None
        _check_names(cfg, label)
        spec = Spec(values, cfg)
        if spec.run_name in seen:
            raise TicketlabError(
                f"sweep entries {seen[spec.run_name]} and {label} are one run ({spec.run_name}): levels, replicates "
                "and baselines extend a run; sweep over what changes the result"
            )
        seen[spec.run_name] = label
        specs.append(spec)
    return specs


def load_grid(path: str | Path) -> list[Spec]:
    """Read a grid file (``base:`` and ``grid:``, YAML or JSON) and :func:`expand` it."""
    doc = load_file(path)
    unknown = sorted(set(map(str, doc)) - {"base", "grid"})
    if unknown:
        raise TicketlabError(f"sweep file {path}: unknown key(s) {short_repr(unknown)}; give `base:` and `grid:`")
    if not doc.get("grid"):
        raise TicketlabError(f"sweep file {path} has no `grid:` (field name -> list of values, e.g. fraction: [0.2])")
    return expand(doc.get("base") or {}, doc["grid"])


def sweep_dir(specs: list[Spec], out: str | Path) -> Path:
    """``out/sweep-<hash>``: the hash is of the entries' grid values and run directories, so one grid, one place."""
    text = json.dumps([[_label(s.values), s.run_name] for s in specs])
    return Path(out) / f"sweep-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def run_one(config: dict[str, Any], out: str, device: str, threads: int | None) -> str:
    """Run (or resume) one spec in this process, with ``threads`` torch threads (None: leave as is); the run
    directory's path. Module-level, so worker processes and Ray tasks import it by name."""
    if threads is not None:
        torch.set_num_threads(threads)
    return str(imp(C.from_dict(config), out=out, device=device, progress=False).path)


def _ray_tasks(specs: list[Spec], out: str, device: str, address: str | None):
    """Submit one Ray task per spec; yields each finished spec's index as it completes."""
    try:
        import ray  # noqa: PLC0415 -- optional: only the ray executor needs it
    except ImportError:
        raise TicketlabError("--executor ray needs Ray: pip install 'ticketlab[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(run_one)
    pending = {task.remote(s.config.to_dict(), out, device, 1): i for i, s in enumerate(specs)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        try:
            ray.get(done[0])
        except ray.exceptions.RayTaskError as e:  # a run's own error, as the one line it is, not Ray's traceback
            if isinstance(e.cause, TicketlabError):
                raise TicketlabError(str(e.cause)) from None
            raise
        yield pending.pop(done[0])


def _local_tasks(specs: list[Spec], out: str, device: str, workers: int):
    """Run the specs in ``workers`` spawned processes (in this one for a single worker); yields finished indices."""
    if workers == 1:
        for i, s in enumerate(specs):
            run_one(s.config.to_dict(), out, device, None)
            yield i
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no forked torch state (threads, CUDA) in the workers
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(run_one, s.config.to_dict(), out, device, threads): i for i, s in enumerate(specs)}
        try:
            for future in as_completed(futures):
                future.result()
                yield futures[future]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def run_sweep(
    specs: list[Spec],
    *,
    out: str | Path = "runs",
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) every spec and summarise: ``(sweep directory, summary rows)``; the rows are also written to
    ``summary.csv`` there. One bar on stderr counts runs done of total, with an ETA. TicketlabError for a bad
    executor, worker count or address, and for a run that fails (finished runs are kept; run again to resume)."""
    if executor not in EXECUTORS:
        raise TicketlabError(f"--executor {short_repr(executor)}: choose one of {', '.join(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise TicketlabError(f"--workers {short_repr(workers)}: give a number of processes >= 1")
    if address and executor != "ray":
        raise TicketlabError("--address is the Ray head's address: give it with --executor ray")
    out = str(out)
    todo = [s for s in specs if not finished(s, out)]  # no process started, no data loaded, for a finished run
    if not todo:
        done = iter(())
    elif executor == "ray":
        done = _ray_tasks(todo, out, device, address)
    else:
        done = _local_tasks(todo, out, device, min(workers, len(todo)))
    with tqdm(total=len(specs), desc="sweep", unit="run", file=sys.stderr, disable=not progress) as bar:
        bar.update(len(specs) - len(todo))
        for _ in done:
            bar.update(1)
    rows = summary_rows(specs, out)
    where = sweep_dir(specs, out)
    where.mkdir(parents=True, exist_ok=True)
    write_csv(where / "summary.csv", rows, list(rows[0]) if rows else [])
    (where / "grid.json").write_text(json.dumps([{**s.values, "run_dir": s.run_name} for s in specs], indent=1))
    summary_html(rows, list(specs[0].values) if specs else [], where / "summary.html")
    return where, rows


def summary_html(rows: list[dict[str, Any]], grid_keys: list[str], path: Path) -> Path:
    """The summary as one self-contained HTML page (``path``): the table, each run linked to its own report
    (``report.html`` in its run directory, written here for every run that has finished jobs)."""
    lines = []
    for r in rows:
        run = Path(r["run_dir"])
        try:
            report = html_report(run)
            link = f'<a href="{html.escape(os.path.relpath(report, path.parent))}">{html.escape(run.name)}</a>'
        except TicketlabError:  # nothing finished in that run yet
            link = html.escape(run.name)
        acc = f"{100 * r['acc_mean']:.2f}" if r["n"] else "-"
        std = f" ± {100 * r['acc_std']:.2f}" if r["acc_std"] != "" else ""
        density = f"{100 * r['density']:.2f}" if r["density"] != "" else "-"
        cells = [html.escape(str(r[k])) for k in grid_keys] + [acc + std, str(r["n"]), density]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in [*cells, f"{r['wall_time_s']:.1f}", link]) + "</tr>")
    head = [*grid_keys, "ticket acc % (last level), mean ± sample std", "n", "density %", "wall s", "run (report)"]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ticketlab sweep</title>'
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}"
        "td:last-child{text-align:left}</style></head>\n<body><h1>Sweep: "
        + html.escape(" x ".join(grid_keys))
        + f" ({len(rows)} runs)</h1>\n<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>\n"
        + "\n".join(lines)
        + "\n</table>\n<p>Sample std: ddof=1 over the run's replicates (n).</p></body></html>\n"
    )
    atomic_write_text(path, page)
    return path


def finished(spec: Spec, out: str | Path) -> bool:
    """Whether every trunk job of the spec's run (each replicate and level: the ticket and its baselines) has an
    intact record; anything else (missing, damaged) is left to :func:`ticketlab.imp.imp` to compute or repair."""
    run = RunDir(Path(out) / spec.run_name)
    if not run.config_file.exists():
        return False
    cfg = spec.config
    have = {(r["replicate"], r["level"], r["branch"]) for r in run.results(cfg, quiet=True)}
    return all(
        (rep, level, branch) in have
        for rep in range(cfg.imp.replicates)
        for level in range(level_count(cfg) + 1)
        for branch in (("ticket", *cfg.imp.baselines) if level else ("ticket",))
    )


def summary_rows(specs: list[Spec], out: str | Path) -> list[dict[str, Any]]:
    """One row per spec: its grid values, run directory, the ticket's final test accuracy at the last level (mean,
    sample std, n over replicates), density, and the run's training wall time (seconds, all its jobs)."""
    rows = []
    for s in specs:
        run = RunDir(Path(out) / s.run_name)
        results = run.results(s.config, quiet=True)
        last = level_count(s.config)
        tickets = [r for r in results if r["branch"] == "ticket" and r["level"] == last]
        acc = summarize(r["final_test_acc"] for r in tickets) if tickets else None
        rows.append(
            {
                **{k: _text(v) for k, v in s.values.items()},
                "run_dir": str(run.path),
                "level": last,
                "density": tickets[0]["density"] if tickets else "",
                "acc_mean": acc.mean if acc else "",
                "acc_std": acc.std if acc and acc.n > 1 else "",
                "n": acc.n if acc else 0,
                "wall_time_s": round(sum(float(r["wall_time_s"]) for r in results), 2),
            }
        )
    return rows


def summary_table(rows: list[dict[str, Any]], grid_keys: list[str]) -> str:
    """The summary as aligned text: grid values, ticket accuracy (%) at the last level, density, wall time."""
    head = [*grid_keys, "ticket acc % (last level)", "n", "density %", "wall s", "run"]
    lines = []
    for r in rows:
        std = r["acc_std"] if r["acc_std"] != "" else float("nan")
        acc = mean_std(Summary(r["acc_mean"], std, r["n"])) if r["n"] else ""
        density = f"{100 * r['density']:.2f}" if r["density"] != "" else ""
        cells = [r[k] for k in grid_keys] + [acc or "-", str(r["n"]), density, f"{r['wall_time_s']:.1f}"]
        lines.append([*map(str, cells), Path(r["run_dir"]).name])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *lines])
