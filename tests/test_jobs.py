"""The jobs seam: a level's independent jobs are listed, then handed to an executor, and each finished job's record
names every file it wrote with its SHA-256."""

from conftest import tiny_config

from ticketlab.data import load_dataset
from ticketlab.imp import run_imp
from ticketlab.jobs import run_jobs
from ticketlab.problem import registry_problem
from ticketlab.store import read_csv, read_record, sha256_file


def test_each_level_hands_its_ticket_and_baselines_to_the_executor_as_one_list(tmp_path):
    cfg = tiny_config(imp={"levels": 2})
    data = load_dataset("synthetic")
    batches = []

    def recording(run, jobs, *, progress=False):
        batches.append([(j.files.level, j.files.branch, j.start) for j in jobs])
        return run_jobs(run, jobs, progress=progress)

    run_imp(cfg, registry_problem(cfg, data), tmp_path / "seen", executor=recording)
    assert batches == [
        [(0, "ticket", 0)],
        [(1, "ticket", 0), (1, "reinit", 0), (1, "random_prune", 0)],
        [(2, "ticket", 0), (2, "reinit", 0), (2, "random_prune", 0)],
    ]
    run_imp(cfg, registry_problem(cfg, data), tmp_path / "plain", batch_jobs="off")
    strip = [{k: v for k, v in row.items() if k != "wall_time_s"} for row in read_csv(tmp_path / "seen/results.csv")]
    plain = [{k: v for k, v in row.items() if k != "wall_time_s"} for row in read_csv(tmp_path / "plain/results.csv")]
    assert strip == plain
    # resumed: the same lists are handed over (so batches form alike), and nothing is trained again
    batches.clear()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "seen").rglob("result.json")}
    run_imp(cfg, registry_problem(cfg, data), tmp_path / "seen", executor=recording)
    assert len(batches) == 3
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "seen").rglob("result.json")} == before


def test_a_finished_job_records_every_file_it_wrote_and_what_it_was_made_from(tmp_path):
    cfg = tiny_config(imp={"levels": 1})
    run = run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path)
    dense = read_record(run.job(0, 0, "ticket").result)
    assert sorted(dense["files"]) == sorted(
        f"replicate_0/level_0/{name}"
        for name in (
            "init.safetensors",
            "rewind.safetensors",
            "mask.safetensors",
            "ticket/final.safetensors",
            "ticket/metrics.jsonl",
        )
    )
    for job in ("ticket", "reinit", "random_prune"):
        record = read_record(run.job(0, 1, job).result)
        for rel, digest in record["files"].items():
            assert sha256_file(tmp_path / rel) == digest
        assert record["inputs"]["mask"] == sha256_file(run.level(0, 1).mask)
    assert read_record(run.job(0, 1, "ticket").result)["inputs"]["start"] == sha256_file(run.level(0, 0).rewind)
