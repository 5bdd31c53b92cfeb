"""The rewind-sparsity model of issue 17 (item 3), fitted to an IMP run retrained from several rewind steps.

The model (seed "LTH principles and mechanisms", after its problem 3188011):

    A(k, s) = A_dense * (1 - exp(-k / tau)) * (1 - s)^beta

with ``k`` the rewind step in iterations, ``s = 1 - density`` the ticket's sparsity (over the pruned tensors) and
accuracies as fractions. The smallest rewind step whose accuracy is within ``epsilon`` of dense,

    k*(s) = -tau * ln(1 - (1 - epsilon / A_dense) / (1 - s)^beta),

is infinite (no rewind step reaches it) where ``(1 - s)^beta <= 1 - epsilon / A_dense``.

The grid, per replicate: level 0's ticket (the dense network), each pruned level's trunk ticket at the run's rewind
step, and each ``rewind[to=...]`` branch (``ticketlab branch RUN rewind --to 100it``); steps in epochs are
converted with the run's iterations per epoch. Which points enter the fit:

- the dense network's accuracy is the model's ``A_dense`` by definition, so level 0 enters with ``P(k) = 1``
  (written ``k = inf`` in ``rewind_model.csv``);
- points with ``k = 0`` are **left out of the fit**: the model predicts ``A(0, s) = 0`` whatever its parameters,
  so they carry no information on them and would only inflate the residual variance, hence every standard error,
  while any trained ticket rewound to theta_0 is far above 0. They stay in the CSV (``fitted`` 0, ``in_fit`` 0),
  in the observed k*, and the output says how many were left out.

A_dense, tau and beta are fitted by nonlinear least squares (:func:`scipy.optimize.curve_fit`) on every remaining
(replicate, level, k) point; each comes with its standard error (square root of the covariance diagonal) and the
sample std (ddof=1) of the same fit made per replicate, with n the replicates whose fit converged.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from ticketlab.analysis.capacity import NOT_IMP
from ticketlab.data import iterations_per_epoch, load_configured
from ticketlab.errors import TicketlabError
from ticketlab.report.plots import pyplot, save_figure
from ticketlab.rundir import RunDir
from ticketlab.steps import Step
from ticketlab.store import atomic_write_text, write_csv

MODEL_CSV, FIT_JSON, MODEL_PNG = "rewind_model.csv", "rewind_fit.json", "rewind_model.png"
COLUMNS = ["replicate", "level", "branch", "density", "k", "observed", "fitted", "in_fit"]  # k: inf for dense
PARAMS = ("a_dense", "tau", "beta")
METRICS = ("final_test_acc", "best_test_acc")
HINT = "retrain the levels from other rewind steps first, e.g. `ticketlab branch RUN rewind --to 100it`"


@dataclass(frozen=True)
class Point:
    """One job's accuracy (fraction) at rewind step ``k`` (iterations; inf for the dense network)."""

    replicate: int
    level: int
    branch: str
    density: float
    k: float
    acc: float


@dataclass
class Fit:
    """The fitted parameters (:data:`PARAMS`), their standard errors (None where the points do not determine
    them), the per-replicate fits' sample std (ddof=1; None for n < 2) and n, and what was fitted."""

    value: dict[str, float]
    se: dict[str, float | None]
    replicate_std: dict[str, float | None]
    replicate_n: int
    points: int  # in the fit
    left_out_k0: int  # k = 0 points left out (see the module docstring)
    notes: list[str] = field(default_factory=list)


def model(k: Any, s: Any, a_dense: float, tau: float, beta: float) -> np.ndarray:
    """``A(k, s)`` elementwise over arrays ``k`` (iterations; inf gives P = 1) and ``s`` (sparsity in [0, 1])."""
    k, s = np.asarray(k, dtype=float), np.asarray(s, dtype=float)
    return a_dense * (1.0 - np.exp(-k / tau)) * (1.0 - s) ** beta


def k_star(s: float, a_dense: float, tau: float, beta: float, epsilon: float) -> float:
    """The model's smallest rewind step (iterations) with ``A(k, s) >= A_dense - epsilon``; ``math.inf`` where
    ``(1 - s)^beta <= 1 - epsilon / A_dense`` (infeasible), 0 where ``epsilon >= A_dense``."""
    need = (1.0 - epsilon / a_dense) / (1.0 - s) ** beta if s < 1 else math.inf
    if need >= 1.0:
        return math.inf
    return 0.0 if need <= 0 else -tau * math.log(1.0 - need)


def points(run_dir: str | Path | RunDir, metric: str = "final_test_acc") -> list[Point]:
    """The grid of the IMP run ``run_dir``: level 0's ticket (k = inf), each pruned level's ticket at the run's
    rewind step and each ``rewind`` branch at its ``to``. TicketlabError when it is not an IMP run, ``metric`` is
    not one of :data:`METRICS`, or it has fewer than 2 rewind steps."""
    if metric not in METRICS:
        raise TicketlabError(f"metric {metric!r}: give one of {', '.join(METRICS)}")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    saved = run.saved()
    kind = next((k for k in NOT_IMP if k in saved), None)
    if kind is not None:
        raise TicketlabError(f"{run.path} is a {kind.replace('_', '-')} run, not an IMP run; give an IMP run directory")
    cfg = run.config()
    rows = [r for r in run.rows(quiet=True) if r.get(metric) not in (None, "")]
    steps = {r["branch"]: _rewind_to(r["branch"]) for r in rows}
    steps = {b: s for b, s in steps.items() if s is not None}
    per_epoch = 0
    if any(s.unit == "ep" for s in [cfg.imp.rewind, *steps.values()]):  # only then is the data needed
        per_epoch = iterations_per_epoch(len(load_configured(cfg.data).train), cfg.train.batch_size)
    trunk_k = cfg.imp.rewind.iterations(per_epoch)
    out = []
    for r in rows:
        level, branch = int(r["level"]), r["branch"]
        if branch == "ticket":
            k = math.inf if level == 0 else float(trunk_k)
        elif branch in steps and level > 0:
            k = float(steps[branch].iterations(per_epoch))
            if k == trunk_k:
                continue  # the trunk's own ticket already stands for this step
        else:
            continue
        out.append(Point(int(r["replicate"]), level, branch, float(r["density"]), k, float(r[metric])))
    tested = sorted({p.k for p in out if p.level > 0})
    if len(tested) < 2:
        raise TicketlabError(f"{run.path} has {len(tested)} rewind step(s) on its pruned levels, needs 2; {HINT}")
    return out


def _rewind_to(label: str) -> Step | None:
    """The step of a ``rewind[to=100it]`` branch label, None for any other branch and for a rewind with another
    option (``rewind[init=sparse_aware,to=100it]`` starts from rescaled weights: not a point of the model)."""
    name, _, rest = label.partition("[")
    if name != "rewind":
        return None
    options = dict(o.split("=", 1) for o in rest.rstrip("]").split(",") if "=" in o)
    if options.get("init") == "as_is":
        del options["init"]
    return Step.parse(options["to"]) if set(options) == {"to"} else None


def _fit_arrays(k: np.ndarray, s: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """curve_fit of :func:`model` from a data-driven start; RuntimeError when it does not converge."""
    a0 = float(acc.max()) or 1.0
    finite = k[np.isfinite(k)]
    tau0 = float(np.median(finite)) / 2 if finite.size else 1.0
    use = (s > 0) & (s < 1) & (acc > 0)
    beta0 = float(np.clip(np.mean(np.log(acc[use] / a0) / np.log(1 - s[use])), 0.01, 5)) if use.any() else 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # a singular covariance shows as inf, reported as None
        popt, pcov = curve_fit(
            lambda x, a, t, b: model(x[0], x[1], a, t, b),
            np.vstack([k, s]),
            acc,
            p0=[a0, max(tau0, 1e-3), beta0],
            bounds=([0.0, 1e-9, 0.0], [np.inf, np.inf, np.inf]),
            maxfev=20000,
            check_finite=False,  # k = inf (the dense network) is meant: exp(-inf) = 0
        )
    return popt, pcov


def fit(pts: list[Point]) -> Fit:
    """:data:`PARAMS` fitted to ``pts`` (k = 0 points left out; see the module docstring), with standard errors
    and the per-replicate fits' spread. TicketlabError when fewer than 4 points remain or the fit fails."""
    used = [p for p in pts if p.k > 0]
    left_out = len(pts) - len(used)
    if len(used) < len(PARAMS) + 1:
        raise TicketlabError(
            f"{len(used)} points with k > 0 (dense included) to fit {len(PARAMS)} parameters; need at least "
            f"{len(PARAMS) + 1}: {HINT} (and finish more levels)"
        )

    def arrays(ps: list[Point]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.array(v, dtype=float) for v in zip(*[(p.k, 1 - p.density, p.acc) for p in ps]))

    try:
        popt, pcov = _fit_arrays(*arrays(used))
    except (RuntimeError, ValueError) as e:
        raise TicketlabError(f"the rewind-model fit did not converge ({e}); {HINT}") from None
    # a zero or non-finite variance is a direction the points do not constrain (singular J^T J), not certainty
    se = [float(math.sqrt(v)) if np.isfinite(v) and v > 0 else None for v in np.diag(pcov)]
    notes = []
    if any(x is None for x in se):
        notes.append("the points do not determine every parameter (singular covariance): add rewind steps or levels")
    tested = [p.k for p in used if math.isfinite(p.k)]
    if tested and 5 * popt[1] < min(tested):
        notes.append(
            "tau is far below the smallest tested k > 0 (every tested step is on the plateau): add earlier steps"
        )
    per: list[np.ndarray] = []
    for r in sorted({p.replicate for p in used}):
        mine = [p for p in used if p.replicate == r]
        if len(mine) > len(PARAMS):
            try:
                per.append(_fit_arrays(*arrays(mine))[0])
            except (RuntimeError, ValueError):
                notes.append(f"the fit of replicate {r} alone did not converge; left out of the replicate spread")
    spread = np.std(np.array(per), axis=0, ddof=1) if len(per) > 1 else [None] * len(PARAMS)
    return Fit(
        value=dict(zip(PARAMS, map(float, popt))),
        se=dict(zip(PARAMS, se)),
        replicate_std={n: None if v is None else float(v) for n, v in zip(PARAMS, spread)},
        replicate_n=len(per),
        points=len(used),
        left_out_k0=left_out,
        notes=notes,
    )


def observed_k_star(pts: list[Point], epsilon: float) -> dict[int, float | None]:
    """Per pruned level: the smallest tested k whose mean accuracy over replicates is ``>=`` the dense network's
    mean minus ``epsilon``; None when no tested k reaches it."""
    dense = float(np.mean([p.acc for p in pts if p.level == 0]))
    by: dict[int, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in pts:
        if p.level > 0:
            by[p.level][p.k].append(p.acc)
    return {
        lv: next((k for k in sorted(ks) if np.mean(ks[k]) >= dense - epsilon), None) for lv, ks in sorted(by.items())
    }


def rewind_model(
    run_dir: str | Path | RunDir, *, epsilon: float = 0.01, metric: str = "final_test_acc"
) -> dict[str, Any]:
    """Fit the model to the run's grid and write ``RUN/rewind_model.csv`` (per point), ``RUN/rewind_fit.json``
    (parameters and k* per level) and ``RUN/rewind_model.png``; returns the JSON's content. TicketlabError as
    :func:`points` and :func:`fit`, or for ``epsilon`` outside [0, 1)."""
    if not 0 <= epsilon < 1:
        raise TicketlabError(f"--epsilon {epsilon}: give a tolerance in accuracy as a fraction, e.g. 0.01")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    pts = points(run, metric)
    f = fit(pts)
    a, tau, beta = (f.value[n] for n in PARAMS)
    observed = observed_k_star(pts, epsilon)
    means: dict[int, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in pts:
        means[p.level][p.k].append(p.acc)
    levels = []
    for lv, ks in sorted(means.items()):
        if lv == 0:
            continue
        density = float(np.mean([p.density for p in pts if p.level == lv]))
        pred = k_star(1 - density, a, tau, beta, epsilon)
        per_k = [
            {"k": k, "observed": float(np.mean(v)), "fitted": float(model(k, 1 - density, a, tau, beta)), "n": len(v)}
            for k, v in sorted(ks.items())
        ]
        levels.append(
            {"level": lv, "density": density, "k_star_predicted": None if math.isinf(pred) else pred,
             "k_star_observed": observed.get(lv), "per_k": per_k}
        )  # fmt: skip
    dense = [p.acc for p in pts if p.level == 0]
    result = {
        "model": "A(k, s) = A_dense (1 - exp(-k/tau)) (1 - s)^beta; k in iterations, accuracies as fractions",
        "metric": metric,
        "epsilon": epsilon,
        "dense_mean": float(np.mean(dense)),
        "params": {n: {"value": f.value[n], "se": f.se[n], "replicate_std": f.replicate_std[n]} for n in PARAMS},
        "replicate_n": f.replicate_n,
        "points_in_fit": f.points,
        "k0_points_left_out": f.left_out_k0,
        "notes": f.notes,
        "levels": levels,
    }
    rows = [
        {"replicate": p.replicate, "level": p.level, "branch": p.branch, "density": p.density, "k": p.k,
         "observed": p.acc, "fitted": float(model(p.k, 1 - p.density, a, tau, beta)), "in_fit": int(p.k > 0)}
        for p in pts
    ]  # fmt: skip
    write_csv(run.path / MODEL_CSV, rows, COLUMNS)
    atomic_write_text(run.path / FIT_JSON, json.dumps(result, indent=2) + "\n")
    _plot(pts, result, run.path / MODEL_PNG)
    return result


def _plot(pts: list[Point], result: dict[str, Any], path: Path) -> Path:
    """Left: accuracy vs k per level, points and fitted curves; right: k*(s) predicted (curve) vs observed."""
    plt = pyplot()
    a, tau, beta = (result["params"][n]["value"] for n in PARAMS)
    eps = result["epsilon"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    top = max(p.k for p in pts if math.isfinite(p.k)) * 1.1 or 1.0
    grid = np.linspace(0, top, 200)
    for i, row in enumerate(result["levels"]):
        color = f"C{i % 10}"
        mine = [p for p in pts if p.level == row["level"]]
        left.scatter([p.k for p in mine], [100 * p.acc for p in mine], color=color, s=14)
        s = 1 - row["density"]
        left.plot(grid, 100 * model(grid, s, a, tau, beta), color=color, label=f"{100 * row['density']:.1f}% left")
    left.axhline(100 * (result["dense_mean"] - eps), color="k", ls="--", lw=0.8, label="dense - epsilon")
    left.set(xlabel="rewind step k (iterations)", ylabel=f"{result['metric']} (%)", title="accuracy vs rewind step")
    left.legend(fontsize=7)
    s_top = max(1 - r["density"] for r in result["levels"])
    ss = np.linspace(0, s_top, 200)
    pred = np.array([k_star(x, a, tau, beta, eps) for x in ss])
    right.plot(100 * ss, np.where(np.isinf(pred), np.nan, pred), label="predicted")
    seen = [
        (100 * (1 - r["density"]), r["k_star_observed"]) for r in result["levels"] if r["k_star_observed"] is not None
    ]
    if seen:
        right.scatter(*zip(*seen), color="C3", zorder=3, label="observed (smallest tested k)")
    right.set(xlabel="sparsity s (%)", ylabel="k* (iterations)", title=f"k*(s), epsilon = {eps}")
    right.legend(fontsize=7)
    return save_figure(fig, path)


def _k(v: float | None, none: str) -> str:
    return none if v is None else f"{v:.0f}it"


def rewind_table(result: dict[str, Any]) -> str:
    """The fitted parameters (value ± SE, replicate spread) and one line per level: density, predicted and
    observed k*, and the mean observed / fitted accuracy (%) at each tested k."""
    lines = [f"Rewind-sparsity model: {result['model']} ({result['metric']})"]
    n = result["replicate_n"]
    for name, p in result["params"].items():
        se = "-" if p["se"] is None else f"{p['se']:.4g}"
        rs = "-" if p["replicate_std"] is None else f"{p['replicate_std']:.4g}"
        lines.append(f"  {name:8s} {p['value']:.4g}  (SE {se}; per-replicate fits: sample std {rs}, n = {n})")
    lines.append(f"  {result['points_in_fit']} points in the fit (dense as P(k) = 1)")
    if result["k0_points_left_out"]:
        lines.append(
            f"  {result['k0_points_left_out']} points at k = 0 left out of the fit: the model predicts 0 there"
        )
    lines += [f"  note: {x}" for x in result["notes"]]
    ks = sorted({c["k"] for r in result["levels"] for c in r["per_k"]})
    head = ["level", "density", "k* predicted", "k* observed", *[f"k={k:.0f}it obs/fit" for k in ks]]
    body = []
    for r in result["levels"]:
        cells = {c["k"]: f"{100 * c['observed']:.2f}/{100 * c['fitted']:.2f}" for c in r["per_k"]}
        body.append([str(r["level"]), f"{100 * r['density']:.2f}%", _k(r["k_star_predicted"], "infeasible"),
                     _k(r["k_star_observed"], "none tested"), *[cells.get(k, "-") for k in ks]])  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines.append(f"k*: smallest rewind step within epsilon = {result['epsilon']} of dense ({result['dense_mean']:.4f})")
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *body]]
    return "\n".join(lines)
