"""The normalisation study (issue 17 item 4): does the ticket's lead over its baselines depend on the normalisation
layer and the batch size?

``ticketlab norms`` runs one IMP experiment (one config, one seed) once per (norm, batch size): a sweep over
``model.norm`` and ``train.batch_size`` (:mod:`ticketlab.sweep`), so each run is an ordinary resumable IMP run in
``--out`` and a second call trains nothing. The table then puts, for every norm, batch size and level, the ticket
beside its baselines (random re-init, random pruning): test accuracy as mean ± sample std (ddof=1) over the
replicates, and the ticket's margin over the best baseline (difference of means).

Batch size and training length: ``--steps`` in epochs (``2ep``) keeps the epochs the same at every batch size, so
a larger batch takes fewer iterations (``train // batch`` per epoch) over the same examples; ``--steps`` in
iterations (``500it``) keeps the iteration count, so a larger batch sees more epochs. The rewind point,
warmup and ``--eval-every`` are converted the same way. The table names the batch size and the training length.

Norms (:data:`ticketlab.models.NORMS`): ``batch`` (BatchNorm, batch statistics while training), ``group`` (32
groups, fewer where the channels do not divide: with 32 channels or fewer it is instance norm), ``layer``
(GroupNorm with one group: C, H, W) and ``none``. Only a model whose factory takes ``norm`` can be studied
(the conv models; not the MLPs or ``mnist1d_cnn``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab import config as C
from ticketlab import sweep as SW
from ticketlab.errors import TicketlabError
from ticketlab.models import NORMS, model_arguments, model_names
from ticketlab.report.tables import LABELS, Summary, imp_summary, mean_std, spread_note
from ticketlab.rundir import RunDir
from ticketlab.store import write_csv

DEFAULT_NORMS = NORMS
DEFAULT_BATCH_SIZES = (16, 256)
BASELINES = ("reinit", "random_prune")
COLUMNS = [
    "norm",
    "batch_size",
    "steps",
    "level",
    "density",
    *(f"{b}_{s}" for b in ("ticket", *BASELINES) for s in ("mean", "std", "n")),
    "margin",
    "run_dir",
]


def parse_norms(text: str) -> list[str]:
    """``"batch,group"`` -> ["batch", "group"]; TicketlabError naming --norms for an unknown, repeated or no norm."""
    norms = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in norms if n not in NORMS]
    if not norms or bad or len(set(norms)) != len(norms):
        raise TicketlabError(
            f"--norms {text!r}: give distinct comma-separated norms from {', '.join(NORMS)}, e.g. batch,none"
        )
    return norms


def parse_batch_sizes(text: str) -> list[int]:
    """``"16,256"`` -> [16, 256]; TicketlabError naming --batch-sizes for anything but distinct whole numbers >= 1."""
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise TicketlabError(f"--batch-sizes {text!r}: give distinct comma-separated whole numbers >= 1, e.g. 16,256")
    return sizes


def norm_specs(base: C.ExperimentConfig, norms: list[str], batch_sizes: list[int]) -> list[SW.Spec]:
    """One sweep entry per (norm, batch size) over ``base`` (norm outer, batch size inner, in the order given);
    everything else, seeds included, as in ``base``. TicketlabError (one line) for a model whose factory takes no
    ``norm`` argument, before anything runs."""
    model = base.model.model
    if "norm" not in model_arguments(model):
        takers = [m for m in model_names() if "norm" in model_arguments(m)]
        raise TicketlabError(
            f"norms: model {model!r} takes no norm argument; choose one that does with --model, e.g. "
            f"{', '.join(takers[:6])}"
        )
    return SW.expand(base.to_dict(), {"norm": list(norms), "batch_size": list(batch_sizes)})


def _cells(summary: Summary | None) -> dict[str, Any]:
    if summary is None:
        return {"mean": "", "std": "", "n": 0}
    return {"mean": summary.mean, "std": summary.std if summary.n > 1 else "", "n": summary.n}


def study_rows(specs: list[SW.Spec], out: str | Path, metric: str = "final_test_acc") -> list[dict[str, Any]]:
    """One row per (norm, batch size, level) with a finished ticket: density (fraction of the pruned weights kept),
    each branch's ``metric`` as mean, sample std (ddof=1; empty for n = 1) and n over replicates, and ``margin``:
    the ticket's mean minus the best baseline's mean (empty at level 0, which has no baselines)."""
    rows = []
    for s in specs:
        run = RunDir(Path(out) / s.run_name)
        for level, cell in imp_summary(run.results(s.config, quiet=True), metric).items():
            branches = cell["branches"]
            if "ticket" not in branches:
                continue
            baselines = [branches[b].mean for b in BASELINES if b in branches]
            row: dict[str, Any] = {
                "norm": s.config.model.norm,
                "batch_size": s.config.train.batch_size,
                "steps": str(s.config.train.steps),
                "level": level,
                "density": cell["density"],
            }
            for b in ("ticket", *BASELINES):
                row.update({f"{b}_{k}": v for k, v in _cells(branches.get(b)).items()})
            row["margin"] = branches["ticket"].mean - max(baselines) if baselines else ""
            row["run_dir"] = str(run.path)
            rows.append(row)
    return rows


def _text(row: dict[str, Any], branch: str) -> str:
    if not row[f"{branch}_n"]:
        return "-"
    std = row[f"{branch}_std"]
    return mean_std(Summary(row[f"{branch}_mean"], float("nan") if std == "" else std, row[f"{branch}_n"]))


def study_table(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> str:
    """The rows as aligned text: accuracies in %, the margin in percentage points, and a note on what the
    cells hold and how the training length relates to the batch size."""
    head = ["norm", "batch", "steps", "level", "weights left", *(LABELS[b] for b in ("ticket", *BASELINES))]
    head.append("ticket - best baseline (pp)")
    lines = [
        [r["norm"], str(r["batch_size"]), r["steps"], str(r["level"]), f"{100 * r['density']:.2f}%"]
        + [_text(r, b) for b in ("ticket", *BASELINES)]
        + ["" if r["margin"] == "" else f"{100 * r['margin']:+.2f}"]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    body = [
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines
    ]
    steps = {r["steps"] for r in rows}
    length = (
        "training length in epochs: the same epochs at every batch size (fewer iterations for larger batches)"
        if all(s.endswith("ep") for s in steps)
        else "training length in iterations: the same iterations at every batch size (more epochs for larger batches)"
    )
    ns = [r[f"{b}_n"] for r in rows for b in ("ticket", *BASELINES) if r[f"{b}_n"]]
    title = f"test accuracy (%) by norm and batch size, {spread_note(ns)} -- {metric}; {length}"
    return "\n".join([title, "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(), *body])


def norm_study(
    base: C.ExperimentConfig,
    norms: list[str],
    batch_sizes: list[int],
    *,
    out: str | Path = "runs/norms",
    workers: int = 1,
    device: str = "auto",
    progress: bool = False,
    metric: str = "final_test_acc",
) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) the study: every (norm, batch size) run of :func:`norm_specs` with
    :func:`ticketlab.sweep.run_sweep` (``workers`` local processes), then :func:`study_rows`, written to
    ``out/norms.csv``. Returns (that file, the rows). TicketlabError for a model without a norm argument, a bad
    config or worker count, or a run that fails (finished runs are kept: run again to resume)."""
    specs = norm_specs(base, norms, batch_sizes)
    SW.run_sweep(specs, out=out, workers=workers, device=device, progress=progress)
    rows = study_rows(specs, out, metric)
    path = Path(out) / "norms.csv"
    write_csv(path, rows, COLUMNS)
    return path, rows
