"""The rewind-sparsity model A(k, s) = A_dense (1 - e^{-k/tau}) (1 - s)^beta (issue 17 item 3): the fit recovers
known parameters, k*(s) matches hand-computed values, and ``analyze --rewind-model`` runs end to end."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from ticketlab.analysis import rewind_model as RWM
from ticketlab.branches import run_branch
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir

TRUE = {"a_dense": 0.9, "tau": 150.0, "beta": 0.2}


def _synthetic(noise: float, seed: int = 0, with_k0: bool = False) -> list[RWM.Point]:
    rng = np.random.default_rng(seed)
    pts = []
    for r in range(3):
        pts.append(RWM.Point(r, 0, "ticket", 1.0, math.inf, TRUE["a_dense"] + noise * rng.standard_normal()))
        for level, density in enumerate((0.5, 0.25, 0.1), start=1):
            for k in (0, 50, 100, 200, 400, 800) if with_k0 else (50, 100, 200, 400, 800):
                acc = float(RWM.model(k, 1 - density, **TRUE)) + noise * rng.standard_normal()
                pts.append(RWM.Point(r, level, f"rewind[to={k}it]", density, float(k), acc))
    return pts


def test_fit_recovers_tau_and_beta_from_data_made_by_the_model():
    f = RWM.fit(_synthetic(noise=0.002))
    for name, true in TRUE.items():
        assert f.se[name] is not None and f.se[name] > 0
        assert abs(f.value[name] - true) < 4 * f.se[name], name
        assert f.value[name] == pytest.approx(true, rel=0.05), name
    assert f.replicate_n == 3 and all(f.replicate_std[n] > 0 for n in RWM.PARAMS)
    assert f.points == 3 * 16 and f.left_out_k0 == 0


def test_noise_free_data_is_fitted_exactly_and_k0_points_are_left_out_without_changing_the_fit():
    exact = RWM.fit(_synthetic(noise=0.0))
    for name, true in TRUE.items():
        assert exact.value[name] == pytest.approx(true, rel=1e-6)
    pts = _synthetic(noise=0.002, with_k0=True)
    with_k0 = [RWM.Point(p.replicate, p.level, p.branch, p.density, p.k, 0.8 if p.k == 0 else p.acc) for p in pts]
    f = RWM.fit(with_k0)
    assert f.left_out_k0 == 3 * 3 and f.points == 3 * 16
    assert f.value == pytest.approx(RWM.fit([p for p in pts if p.k > 0]).value)


def test_k_star_golden_values_by_hand():
    # s = 0: 1 - (1 - 0.01/0.9) = 1/90, so k* = 100 ln 90
    assert RWM.k_star(0.0, 0.9, 100.0, 0.5, 0.01) == pytest.approx(100 * math.log(90))
    # (1 - s)^0.5 = 0.99: 1 - (89/90)/0.99 = 0.1/89.1, so k* = 100 ln 891
    assert RWM.k_star(1 - 0.99**2, 0.9, 100.0, 0.5, 0.01) == pytest.approx(100 * math.log(891))
    # (1 - 0.1)^0.5 = 0.949 < 89/90: no rewind step reaches dense - epsilon
    assert RWM.k_star(0.1, 0.9, 100.0, 0.5, 0.01) == math.inf
    assert RWM.k_star(0.5, 0.9, 100.0, 0.5, 0.95) == 0.0  # epsilon above A_dense: any k will do
    # the model at k* is A_dense - epsilon
    k = RWM.k_star(0.01, 0.9, 100.0, 0.5, 0.01)
    assert float(RWM.model(k, 0.01, 0.9, 100.0, 0.5)) == pytest.approx(0.9 - 0.01)


def test_k_star_grows_with_sparsity_until_infeasible():
    ss = np.linspace(0, 0.03, 16)
    ks = [RWM.k_star(s, 0.9, 100.0, 0.5, 0.01) for s in ss]
    edge = 1 - (89 / 90) ** 2  # (1 - s)^0.5 = 1 - epsilon / A_dense
    finite = [k for s, k in zip(ss, ks) if s < edge]
    assert len(finite) > 10 and all(b > a for a, b in zip(finite, finite[1:]))
    assert all(k == math.inf for s, k in zip(ss, ks) if s > edge)


def test_too_few_points_to_fit_names_the_branch_command():
    pts = _synthetic(noise=0.0)[:3]
    with pytest.raises(TicketlabError, match="branch RUN rewind --to"):
        RWM.fit(pts)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("imp")
    cfg = tiny_config(
        train={"steps": "50it", "eval_every": "25it"}, imp={"levels": 2, "rewind": "10it", "replicates": 1}
    )
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), path, batch_jobs="off")
    bare = tmp_path_factory.mktemp("bare") / "run"
    shutil.copytree(path, bare)
    for to in ("20it", "1ep"):  # 1ep = 40it on the synthetic train split at batch 50
        run_branch(path, "rewind", options={"to": to}, batch_jobs="off", device="cpu")
    return path, bare


def test_a_run_with_one_rewind_step_says_which_branch_to_run(runs):
    _, bare = runs
    with pytest.raises(TicketlabError, match="1 rewind step.*ticketlab branch RUN rewind --to"):
        RWM.rewind_model(bare)


def test_end_to_end_writes_the_points_fit_and_plot(runs, capsys):
    path, _ = runs
    assert main(["analyze", str(path), "--rewind-model", "--epsilon", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "k* predicted" in out and "tau" in out and "beta" in out
    rows = {(r["replicate"], r["level"], r["branch"]): r for r in RunDir(path).rows()}
    with open(path / RWM.MODEL_CSV, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 1 + 2 * 3  # dense, and 2 levels x 3 rewind steps
    per_epoch = len(load_dataset("synthetic").train) // 50
    assert {float(r["k"]) for r in table} == {math.inf, 10.0, 20.0, float(per_epoch)}
    fit = json.loads((path / RWM.FIT_JSON).read_text())
    a, tau, beta = (fit["params"][n]["value"] for n in RWM.PARAMS)
    for r in table:
        assert float(r["observed"]) == rows[(int(r["replicate"]), int(r["level"]), r["branch"])]["final_test_acc"]
        s = 1 - float(r["density"])
        assert float(r["fitted"]) == pytest.approx(float(RWM.model(float(r["k"]), s, a, tau, beta)))
    assert fit["points_in_fit"] == 7 and fit["replicate_n"] == 1 and fit["epsilon"] == 0.05
    assert [lv["level"] for lv in fit["levels"]] == [1, 2]
    assert (path / RWM.MODEL_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rewinds_from_rescaled_weights_are_not_points_of_the_model():
    assert RWM._rewind_to("rewind[to=5it]").iterations(0) == 5
    assert RWM._rewind_to("rewind[init=sparse_aware,to=5it]") is None
    assert RWM._rewind_to("rewind[init=matched,to=5it]") is None
