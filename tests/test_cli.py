"""The command line end to end, in subprocesses, as a user runs it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ticketlab.store import read_csv

TINY = (
    "--dataset synthetic --model mlp --widths 16,8 --steps 40it --eval-every 20it --batch-size 50 --lr 0.01 "
    "--fraction 0.5 --replicates 1 --levels 2 --no-progress"
).split()
COLUMNS = [
    "replicate",
    "level",
    "branch",
    "density",
    "density_all",
    "effective_density",
    "final_test_acc",
    "best_test_acc",
    "early_stop_step",
    "train_acc",
    "wall_time_s",
    "train_flops",
    "dense_flops",
]


def ticketlab(*args, cwd=None, check=False, **kw):
    script = Path(sys.executable).parent / "ticketlab"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ticketlab"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=os.environ.copy(), **kw)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def test_imp_end_to_end_writes_results_table_and_plot(tmp_path):
    proc = ticketlab("imp", *TINY, "--out", str(tmp_path), check=True)
    run_dirs = list(tmp_path.iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("mlp-synthetic-")
    rows = read_csv(run_dirs[0] / "results.csv")
    assert list(rows[0]) == COLUMNS
    assert [(r["level"], r["branch"]) for r in rows] == [
        ("0", "ticket"),
        ("1", "ticket"),
        ("1", "reinit"),
        ("1", "random_prune"),
        ("2", "ticket"),
        ("2", "reinit"),
        ("2", "random_prune"),
    ]
    assert (run_dirs[0] / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The printed table has one line per level with the densities of results.csv.
    for density in (rows[1]["density"], rows[4]["density"]):
        assert f"{100 * float(density):.2f}%" in proc.stdout
    for name in ("level_0", "level_1", "level_2"):
        assert (run_dirs[0] / "replicate_0" / name / "mask.safetensors").exists()
    assert (run_dirs[0] / "replicate_0" / "level_0" / "rewind.safetensors").exists()

    # The same command again finds every job done: nothing is retrained, results are identical.
    before = {p: p.stat().st_mtime_ns for p in run_dirs[0].rglob("final.safetensors")}
    again = ticketlab("imp", *TINY, "--out", str(tmp_path), check=True)
    assert {p: p.stat().st_mtime_ns for p in run_dirs[0].rglob("final.safetensors")} == before
    assert "test acc" not in again.stderr
    assert read_csv(run_dirs[0] / "results.csv") == rows

    report = ticketlab("report", str(run_dirs[0]), check=True)
    assert "random pruning" in report.stdout


def test_kill_minus_nine_then_resume_gives_the_uninterrupted_results(tmp_path):
    args = [*TINY[:-3], "--levels", "3", "--steps", "400it", "--no-progress"]
    ticketlab("imp", *args, "--out", str(tmp_path / "clean"), check=True)
    clean = read_csv(next((tmp_path / "clean").iterdir()) / "results.csv")

    script = Path(sys.executable).parent / "ticketlab"
    proc = subprocess.Popen(
        [str(script), "imp", *args, "--out", str(tmp_path / "killed")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    marker = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("*/replicate_0/level_1/reinit/result.json"))
        if found:
            marker = found[0]
            break
        time.sleep(0.05)
    assert marker is not None and proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = marker.parents[3]
    assert not (run_dir / "results.csv").exists()
    ticketlab("imp", *args, "--out", str(tmp_path / "killed"), check=True)
    assert _strip(read_csv(run_dir / "results.csv")) == _strip(clean)
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--preset", "lth-nope"], "unknown preset 'lth-nope'"),
        (["--fraction", "0"], r"fraction must be in (0, 1]"),
        (["--fraction", "1.2"], r"fraction must be in (0, 1]"),
        (["--output-fraction", "2"], r"output_fraction must be in (0, 1]"),
        (["--one-shot", "--target-density", "0"], r"target_density must be in (0, 1]"),
        (["--one-shot", "--target-density", "1.5"], r"target_density must be in (0, 1]"),
        (["--steps", "100"], "malformed step '100'"),
        (["--rewind", "2 epochs"], "malformed step"),
        (["--config", "/nonexistent/c.yaml"], "cannot read config file"),
        (["--widths", "a,b"], "cannot read"),
        (["--ignore", "fc.9.weight"], "--ignore names no parameter"),
        (["--dataset", "fashion-mnist", "--data-dir", "EMPTY"], "must hold the four IDX files"),
        (["--device", "cuda:7"], "cuda"),
        (["--rewind", "40it"], "must come before the end of training"),
        (["--steps", "0it"], "trains for no iterations"),
        (["--ignore", "fc"], "no prunable parameters"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--widths", "-3"], "widths must be positive"),
        (["--baselines", "reinit,reinit"], "baselines names one twice"),
        (["--at-init", "--criterion", "movement"], "same at initialisation"),
        (["--layer-fractions", "fc.9.weight=0.1"], "not prunable"),
        (["--keep-dense", "first,last", "--at-init", "--target-density", "0.01"], "cannot be reached"),
        (["--units", "l1", "--criterion", "snip"], "leave --criterion at large_final"),
        (["--units", "l1", "--strategy", "global"], "--units l1 is layerwise"),
        (["--units", "l1", "--layer-fractions", "fc.2.weight=0.1"], "cannot be pruned as units"),
        (["--batch-jobs", "0"], "--batch-jobs (batch_jobs=) '0': give auto, off, or a number of jobs per pass"),
        (["--batch-jobs", "many"], "--batch-jobs (batch_jobs=) 'many': give auto, off"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    out = tmp_path / "out"
    proc = ticketlab("imp", *TINY, *args, "--out", str(out))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ticketlab: error:") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_malformed_config_file_and_unknown_flag(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    proc = ticketlab("imp", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "cannot parse config file" in proc.stderr and "Traceback" not in proc.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  learning_rate: 0.1\n")
    proc = ticketlab("imp", "--config", str(unknown), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unknown key(s) ['learning_rate']" in proc.stderr
    proc = ticketlab("imp", "--learning-rate", "0.1")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_config_file_then_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {dataset: synthetic}\nmodel: {model: mlp, widths: [16, 8]}\n"
        "train: {steps: 40it, eval_every: 20it, batch_size: 50}\nimp: {levels: 1, replicates: 1, baselines: []}\n"
    )
    ticketlab("imp", "--config", str(cfg), "--levels", "2", "--no-progress", "--out", str(tmp_path / "o"), check=True)
    rows = read_csv(next((tmp_path / "o").iterdir()) / "results.csv")
    assert [r["level"] for r in rows] == ["0", "1", "2"] and {r["branch"] for r in rows} == {"ticket"}


def test_help_documents_every_flag_and_presets_are_listed():
    text = ticketlab("imp", "--help", check=True).stdout
    for flag in (
        "--levels",
        "--rewind",
        "--one-shot",
        "--fraction",
        "--output-fraction",
        "--strategy",
        "--ignore",
        "--replicates",
        "--baselines",
        "--optimizer",
        "--momentum",
        "--nesterov",
        "--weight-decay",
        "--schedule",
        "--milestones",
        "--warmup",
        "--steps",
        "--val-size",
        "--data-dir",
        "--init",
    ):
        assert flag in text
    presets = ticketlab("presets", check=True).stdout
    assert "lth-lenet300" in presets and "mnist1d-lth" in presets


def test_unwritable_output_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = ticketlab("imp", *TINY, "--out", str(blocker / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("ticketlab: error:")


def test_export_a_structured_ticket_from_the_command_line(tmp_path):
    import torch

    out = tmp_path / "out"
    ticketlab("imp", *TINY, "--units", "l2", "--baselines", "", "--out", str(out), check=True)
    run = next(out.glob("mlp-*"))
    proc = ticketlab("export", str(run), "--level", "2", check=True)
    assert proc.stdout.startswith(f"exported {run / 'ticket-level-2.pt2'}: ")
    program = torch.export.load(run / "ticket-level-2.pt2").module()
    shapes = {n: tuple(p.shape) for n, p in program.named_parameters()}
    assert shapes["fc.0.weight"][0] == 4 and shapes["fc.1.weight"] == (2, 4)  # 16 -> 4 and 8 -> 2 neurons
    missing = ticketlab("export", str(run), "--level", "5")
    assert missing.returncode == 2 and "has not finished" in missing.stderr and "Traceback" not in missing.stderr


def test_branch_command_adds_rows_and_resumes(tmp_path):
    out = tmp_path / "out"
    ticketlab("imp", *TINY, "--rewind", "10it", "--baselines", "", "--out", str(out), check=True)
    run = next(out.glob("mlp-*"))
    proc = ticketlab("branch", str(run), "perturb", "--noise", "0.3", "--levels", "1", check=True)
    assert "perturb[noise=0.3]" in proc.stdout.splitlines()[1]
    rows = read_csv(run / "results.csv")
    assert [(r["level"], r["branch"]) for r in rows if r["branch"] != "ticket"] == [("1", "perturb[noise=0.3]")]
    again = ticketlab("branch", str(run), "perturb", "--noise", "0.3", "--levels", "1", check=True)
    assert "test acc" not in again.stderr and again.stdout == proc.stdout
    bad = ticketlab("branch", str(run), "perturb", "--shuffle", "rows")
    assert bad.returncode == 2 and "shuffle must be one of" in bad.stderr and "Traceback" not in bad.stderr


def test_disjoint_command(tmp_path):
    out = tmp_path / "out"
    proc = ticketlab("disjoint", *TINY, "--tickets", "2", "--out", str(out), check=True)
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("round  earlier tickets hold") and [ln.split()[0] for ln in lines[3:5]] == ["0", "1"]
    assert len(read_csv(next(out.glob("disjoint-*")) / "disjoint.csv")) == 2
    bad = ticketlab("disjoint", *TINY, "--tickets", "0", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr and not (tmp_path / "bad").exists()
