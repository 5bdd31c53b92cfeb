"""`ticketlab sweep`: a grid expands to checked, ordered run specs; each is an ordinary resumable run, whichever
executor runs it (local processes or Ray), and a sweep killed mid-run finishes with the same results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_config

from ticketlab import sweep as SW
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.imp import imp
from ticketlab.store import read_csv

BASE = tiny_config(imp={"levels": 1}).to_dict()  # synthetic data, MLP 32-16, 60 it, one pruned level
GRID = {"strategy": ["layerwise", "global"], "fraction": [0.2, 0.5]}


def _rows(out: Path, specs: list[SW.Spec]) -> list[dict[str, str]]:
    """Every spec's results.csv rows, in spec order, without the wall time (it differs from run to run)."""
    rows = []
    for s in specs:
        for r in read_csv(out / s.run_name / "results.csv"):
            r.pop("wall_time_s")
            rows.append({"run": s.run_name, **r})
    return rows


def _result_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/replicate_*/level_*/*/result.json")}


def test_expansion_is_ordered_checked_and_independent_of_key_order():
    specs = SW.expand({"preset": "mnist1d-lth", "imp": {"levels": 2}}, GRID)
    # fields sorted (prune.fraction before prune.strategy), values in the order given
    assert [tuple(s.values.values()) for s in specs] == [
        (0.2, "layerwise"),
        (0.2, "global"),
        (0.5, "layerwise"),
        (0.5, "global"),
    ]
    assert [(s.config.prune.fraction, s.config.prune.strategy) for s in specs] == [
        tuple(s.values.values()) for s in specs
    ]
    assert all(s.config.imp.levels == 2 and s.config.imp.replicates == 3 for s in specs)  # base over the preset
    again = SW.expand({"imp": {"levels": 2}}, {"prune.fraction": [0.2, 0.5], "prune.strategy": ["layerwise", "global"]})
    assert [s.run_name for s in again] == [s.run_name for s in specs]
    assert len({s.run_name for s in specs}) == 4


@pytest.mark.parametrize(
    "grid, says",
    [
        ({"fractionn": [0.2]}, "unknown config field 'fractionn'"),
        ({"fraction": []}, "non-empty list"),
        ({"fraction": 0.2}, "non-empty list"),
        ({"fraction": [0.2, 1.5]}, "fraction=1.5"),
        ({"strategy": ["layerwise", "nope"]}, "not one of"),
        ({"model": ["mlp", "no_such_net"]}, "unknown model 'no_such_net'"),
        ({"preset": ["nope"]}, "unknown preset"),
        ({"levels": [1, 2]}, "are one run"),
        ({"fraction": [0.2], "prune.fraction": [0.5]}, "given twice"),
    ],
)
def test_a_bad_grid_is_one_line_before_anything_runs(tmp_path, capsys, grid, says):
    with pytest.raises(TicketlabError, match=None) as e:
        SW.expand(BASE, grid)
    assert says in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "grid": grid}))
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A 2x2 sweep with the local executor, two worker processes: (its out directory, specs, summary rows)."""
    out = tmp_path_factory.mktemp("local")
    specs = SW.expand(BASE, GRID)
    where, summary = SW.run_sweep(specs, out=out, workers=2, device="cpu", progress=False)
    assert (where / "summary.csv").exists()
    return out, specs, summary


def test_local_sweep_equals_each_run_alone_and_a_second_sweep_does_no_work(local_sweep, tmp_path, monkeypatch):
    out, specs, summary = local_sweep
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # as each of the sweep's two workers had
    try:
        for s in specs:
            imp(s.config, out=tmp_path, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert _rows(out, specs) == _rows(tmp_path, specs)
    assert [r["fraction"] for r in summary] == ["0.2", "0.2", "0.5", "0.5"]
    assert all(r["n"] == 1 and r["level"] == 1 and 0 < r["acc_mean"] <= 1 for r in summary)
    d = [r["density"] for r in summary]  # the output layer loses its own 25%
    assert d[0] == d[1] and 0.75 < d[0] < 0.8 and d[2] == d[3] and 0.5 < d[2] < 0.55

    before = _result_files(out)
    assert len(before) == 4 * 4  # per run: level 0's ticket; level 1's ticket and two baselines
    monkeypatch.setattr(SW, "run_one", lambda *a: pytest.fail("a finished run was run again"))
    _, again = SW.run_sweep(specs, out=out, workers=2, device="cpu", progress=False)
    assert again == summary and _result_files(out) == before


def test_a_sweep_killed_mid_run_finishes_with_the_same_results(local_sweep, tmp_path):
    out, specs, _ = local_sweep
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": BASE, "grid": GRID}))
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ticketlab", "sweep", str(grid), "--out", str(runs), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _result_files(runs) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < len(_result_files(runs)) < 16, "killed after the first job finished, before the sweep did"
    assert main(["sweep", str(grid), "--out", str(runs), "--device", "cpu", "--workers", "2"]) == 0
    assert _rows(runs, specs) == _rows(out, specs)


def test_ray_sweep_equals_the_local_one(local_sweep, tmp_path):
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed (pip install 'ticketlab[ray]'; the dev extra has it)")
    out, specs, summary = local_sweep
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _, rows = SW.run_sweep(specs, out=tmp_path, executor="ray", device="cpu", progress=False)
    finally:
        ray.shutdown()
    assert _rows(tmp_path, specs) == _rows(out, specs)
    strip = ("run_dir", "wall_time_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows] == [
        {k: v for k, v in r.items() if k not in strip} for r in summary
    ]


def test_the_ray_executor_without_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(TicketlabError, match=r"pip install 'ticketlab\[ray\]'"):
        SW.run_sweep(SW.expand(BASE, {"fraction": [0.3]}), out=tmp_path, executor="ray", progress=False)


def test_the_sweep_writes_an_html_summary_linking_each_runs_report(tmp_path):
    import re

    from ticketlab.sweep import expand, run_sweep

    specs = expand(
        {
            "data": {"dataset": "synthetic"},
            "model": {"model": "mlp", "widths": [16, 8]},
            "train": {"steps": "40it", "eval_every": "20it", "batch_size": 50, "lr": 0.01},
            "imp": {"levels": 1, "replicates": 1, "baselines": []},
        },
        {"fraction": [0.3, 0.6]},
    )
    where, rows = run_sweep(specs, out=tmp_path, workers=1, progress=False)
    page = (where / "summary.html").read_text()
    links = re.findall(r'href="([^"]+)"', page)
    assert len(links) == 2 and all((where / link).resolve().is_file() for link in links)
    assert all(f"{100 * r['acc_mean']:.2f}" in page for r in rows)


def _ray_task_pids() -> list[int]:
    """Processes of Ray workers running a sweep task (Ray titles them ``ray::run_one``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::run_one"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_ray_worker_killed_mid_run_is_retried_and_the_sweep_ends_with_the_same_results(local_sweep, tmp_path):
    import threading

    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed (pip install 'ticketlab[ray]'; the dev extra has it)")
    out, specs, _ = local_sweep
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killed, outcome = [], {}

    def sweep():
        try:
            outcome["rows"] = SW.run_sweep(specs, out=tmp_path, executor="ray", device="cpu", progress=False)[1]
        except BaseException as e:  # noqa: BLE001 -- reported by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=sweep)
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline and thread.is_alive():
            pids = _ray_task_pids()
            if pids and _result_files(tmp_path):  # a task is mid-run, after a first job has finished
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)
        thread.join(timeout=120)
    finally:
        ray.shutdown()
    assert killed, "no Ray worker was running a task to kill"
    assert "error" not in outcome, outcome.get("error")
    assert _rows(tmp_path, specs) == _rows(out, specs)  # the retried run resumed to the undisturbed results
