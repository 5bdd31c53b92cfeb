"""A run directory you can trust: damaged files are named in one warning line and computed again, the run ends
with the results of an undamaged one, old run directories resume, and a run killed at any moment resumes to
the same bytes.

One tiny reference run is made per module; each case damages a copy of it and runs the same command again.
"""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config

from ticketlab import cli
from ticketlab import masks as M
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.report.tables import imp_table
from ticketlab.rundir import RunDir
from ticketlab.store import RunLock, load_tensors, read_csv, read_record, save_tensors, write_record

sys.path.insert(0, str(REPO / "benchmarks"))
import kill_resume  # noqa: E402

CFG = tiny_config(train={"steps": "40it"}, imp={"levels": 2, "replicates": 1, "rewind": "20it"})
KEY = ["replicate", "level", "branch", "density", "final_test_acc", "best_test_acc", "early_stop_step", "train_acc"]
WARNING = "ticketlab: warning:"


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The undamaged run, trained once."""
    path = tmp_path_factory.mktemp("reference") / "run"
    _run(path, data)
    return path


def _run(path, data):
    return run_imp(CFG, registry_problem(CFG, data), path)


def _rows(path):
    return [[row[k] for k in KEY] for row in read_csv(Path(path) / "results.csv")]


def _tensor_files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(Path(path).rglob("*.safetensors"))}


def _results(path):
    return {p: p.stat().st_mtime_ns for p in sorted(Path(path).rglob("result.json"))}


# ------------------------------------------------------------------------------------------ the damage table

FILES = {
    "result": "replicate_0/level_1/ticket/result.json",
    "config": "config.json",
    "mask": "replicate_0/level_1/mask.safetensors",
    "init": "replicate_0/level_0/init.safetensors",
    "rewind": "replicate_0/level_0/rewind.safetensors",
    "final": "replicate_0/level_1/ticket/final.safetensors",
}


def _edited(path: Path) -> None:
    """A valid file of the right kind, with one value changed."""
    if path.suffix == ".json":
        record = json.loads(path.read_text())
        _bump_first_number(record)
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    elif path.name == "mask.safetensors":
        M.save_mask(path, {n: torch.ones_like(m) for n, m in M.load_mask(path).items()})
    else:
        tensors = load_tensors(path)
        first = next(iter(tensors))
        tensors[first].view(-1)[0] += 1.0
        save_tensors(path, tensors)


def _bump_first_number(obj) -> bool:
    for key in sorted(obj) if isinstance(obj, dict) else range(len(obj)):
        value = obj[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            obj[key] = value + 1
            return True
        if isinstance(value, (dict, list)) and _bump_first_number(value):
            return True
    return False


def _flipped(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 - 32
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "random": lambda p: p.write_bytes(random.Random(p.name).randbytes(p.stat().st_size)),
    "flipped": _flipped,
    "edited": _edited,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("file", list(FILES))
def test_a_damaged_file_is_named_once_and_computed_again_to_the_same_results(
    reference, data, tmp_path, capsys, file, damage
):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    damaged = run / FILES[file]
    before = damaged.read_bytes()
    DAMAGES[damage](damaged)
    assert damaged.read_bytes() != before
    capsys.readouterr()

    _run(run, data)  # the same command again: no exception

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith(WARNING)]
    assert len(warnings) == 1, warnings
    assert str(damaged) in warnings[0]
    assert _rows(run) == _rows(reference)
    assert _tensor_files(run) == _tensor_files(reference)
    # repaired: a further run finds everything intact and computes nothing
    results = _results(run)
    _run(run, data)
    assert WARNING not in capsys.readouterr().err and _results(run) == results


def _not_a_subset(level):
    """An all-True mask with a record that matches it: only the subset check can refuse it."""
    full = {n: torch.ones_like(m) for n, m in M.load_mask(level.mask).items()}
    write_record(level.record, {"mask": M.save_mask(level.mask, full), "kept": M.count(full)})
    return "keeps weights its parent level pruned"


def _miscounted(level):
    record = read_record(level.record)
    write_record(level.record, {**record, "kept": record["kept"] - 1})
    return "not the recorded"


def _record_damaged(level):
    level.record.write_bytes(level.record.read_bytes()[:10])
    return "level.json is damaged"


@pytest.mark.parametrize("forge", [_not_a_subset, _miscounted, _record_damaged])
def test_a_mask_that_is_not_a_subset_of_its_parent_or_of_its_recorded_count_is_computed_again(
    reference, data, tmp_path, capsys, forge
):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    level = RunDir(run).level(0, 2)
    why = forge(level)
    capsys.readouterr()
    _run(run, data)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith(WARNING)]
    assert len(warnings) == 1 and why in warnings[0] and "computing the mask of replicate_0/level_2" in warnings[0]
    assert _rows(run) == _rows(reference)
    assert _tensor_files(run) == _tensor_files(reference)


# ------------------------------------------------------------------------------------------ report


def test_report_leaves_out_a_damaged_job_with_one_warning(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    damaged = run / FILES["result"]
    damaged.write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert cli.main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith(WARNING)]
    assert len(warnings) == 1 and str(damaged) in warnings[0]
    assert "Traceback" not in err
    intact = [r for r in RunDir(reference).rows() if (r["level"], r["branch"]) != (1, "ticket")]
    assert len(intact) == len(_rows(reference)) - 1
    assert imp_table(intact, "final_test_acc") in out


# ------------------------------------------------------------------------------------------ old run directories


def test_a_run_directory_of_ticketlab_0_1_resumes_without_computing_anything_again(reference, data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    # ticketlab 0.1 wrote records without their own digest, their files' or their inputs', and no level.json
    for path in [run / "config.json", *run.rglob("result.json")]:
        record = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in record.items() if k not in ("sha256", "files", "inputs")}))
    for path in run.rglob("level.json"):
        path.unlink()
    results = _results(run)
    capsys.readouterr()
    _run(run, data)
    assert WARNING not in capsys.readouterr().err
    assert _results(run) == results  # no job ran again (masks without a record are recomputed: cheap and equal)
    assert _rows(run) == _rows(reference)
    assert _tensor_files(run) == _tensor_files(reference)


# ------------------------------------------------------------------------------------------ the lock


def test_a_second_process_on_the_same_run_is_refused_before_writing_anything(data, tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(TicketlabError, match="in use by pid"):
            _run(tmp_path, data)
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "results.csv").exists()


# ------------------------------------------------------------------------------------------ kill -9


@pytest.mark.slow
def test_a_run_killed_at_random_moments_resumes_to_the_same_bytes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {dataset: synthetic}\n"
        "model: {model: mlp, widths: [32, 16]}\n"
        "train: {optimizer: adam, lr: 0.01, batch_size: 50, steps: 200it, eval_every: 50it}\n"
        "prune: {strategy: layerwise, fraction: 0.5, output_fraction: 0.25}\n"
        "imp: {rewind: 20it}\n"
    )
    flags = ["--config", str(config), "--replicates", "1", "--levels", "3", "--device", "cpu"]
    # one thread: on a loaded machine OpenMP's spinning threads make a 0.2 s job take seconds
    env = {**kill_resume.environment(), "OMP_NUM_THREADS": "1"}
    timeline = kill_resume.run_whole(tmp_path / "whole", flags, env)
    moments = sorted(random.Random(10).uniform(0, timeline.work) for _ in range(3))
    kills, stderr = kill_resume.run_killed(tmp_path / "killed", flags, env, timeline, moments)
    assert WARNING not in stderr  # a killed run leaves nothing damaged, only unfinished
    assert any(k.hit for k in kills), f"no kill landed while the run was running: {kills}"
    whole, killed = kill_resume.the_run(tmp_path / "whole"), kill_resume.the_run(tmp_path / "killed")
    assert kill_resume.differences(whole, killed) == []
    assert len(kill_resume.comparable(whole)[0]) == 4 + 3 * 8  # level 0: 4 files; per level: 2 masks + 6 weights
    # each level's three jobs trained as one batched pass (--batch-jobs auto), killed and resumed as such
    level = next((tmp_path / "whole").glob("*/replicate_0/level_2"))
    assert {read_record(level / b / "result.json")["batched_with"] for b in ("ticket", "reinit", "random_prune")} == {3}


def test_a_tickets_mask_is_checked_when_the_ticket_is_loaded(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    ticket = RunDir(run).ticket(2)
    assert M.count(ticket.mask) == read_record(RunDir(run).level(0, 2).record)["kept"]
    mask = RunDir(run).level(0, 2).mask
    M.save_mask(mask, {n: torch.ones_like(m) for n, m in ticket.mask.items()})
    with pytest.raises(TicketlabError, match="mask.safetensors is damaged"):
        RunDir(run).ticket(2)
