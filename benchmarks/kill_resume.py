"""kill -9 at random moments of `ticketlab imp`, resumed each time, compared with an uninterrupted run.

    python benchmarks/kill_resume.py [--kills 10] [--seed 0] [-- IMP FLAGS ...]

Default flags: ``--replicates 1 --levels 4`` on the default preset. First an uninterrupted run is timed from the
moment it claims its run directory (config.json written: imports and data loading done) to its end: the work
W. Then N moments are drawn in (0, W), sorted; the run is started, killed with SIGKILL that long after it claims
the directory (the gap since the previous moment), started again, ..., and finally left to finish. Every
``*.safetensors`` file (bytes) and results.csv (minus wall_time_s) must equal the uninterrupted run's.
Prints one line per kill and the verdict; exits 1 on any difference. Not a test (it takes minutes);
tests/test_rundir.py runs a tiny version.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FLAGS = ["--replicates", "1", "--levels", "4"]


@dataclass
class Kill:
    moment: float  # seconds into the uninterrupted run's work
    job: str  # the job it was running when killed
    delay: float  # seconds after this process claimed the run directory
    hit: bool  # the process was still running when killed
    jobs_done: int  # result records on disk just after the kill
    temporaries: int  # temporary files it left


@dataclass
class Timeline:
    """The uninterrupted run, in seconds after it claimed its run directory (wrote config.json)."""

    work: float  # to its end (results.csv written)
    done: list[tuple[float, str]]  # when each job's result record was written, and the job, in order
    warmup: float  # a fresh process's extra time in its first job (level 0's job less a typical one)

    def running(self, jobs_done: int) -> str:
        """The job a run with ``jobs_done`` finished jobs is running (jobs run in a fixed order)."""
        return self.done[jobs_done][1] if jobs_done < len(self.done) else "(results)"

    def resumed_at(self, jobs_done: int) -> float:
        """Where in this timeline a process started after ``jobs_done`` jobs stands when it claims the run."""
        return self.done[jobs_done - 1][0] - self.warmup if jobs_done else 0.0


def imp_command(out: Path, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "ticketlab", "imp", *flags, "--out", str(out), "--no-progress"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def _stamp(out: Path) -> tuple[int, int] | None:
    """Identifies the run's config.json as written (every start rewrites it, atomically, when it claims the run)."""
    for path in out.glob("*/config.json"):
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns
    return None


def _wait_for_claim(proc: subprocess.Popen, out: Path, before: tuple[int, int] | None) -> None:
    while _stamp(out) in (None, before) and proc.poll() is None:
        time.sleep(0.01)


def _jobs_done(out: Path) -> int:
    return len(list(out.rglob("result.json")))


def run_whole(out: Path, flags: list[str], env: dict[str, str]) -> Timeline:
    """Run uninterrupted; returns its timeline (from the files' modification times)."""
    proc = subprocess.run(imp_command(out, flags), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed:\n{proc.stderr}")
    run = the_run(out)
    claimed = (run / "config.json").stat().st_mtime
    done = sorted((p.stat().st_mtime - claimed, _job_name(p.relative_to(run).parts)) for p in run.rglob("result.json"))
    gaps = sorted(b[0] - a[0] for a, b in zip(done, done[1:]))
    warmup = max(0.0, done[0][0] - gaps[len(gaps) // 2]) if gaps else 0.0
    return Timeline((run / "results.csv").stat().st_mtime - claimed, done, warmup)


def _job_name(parts: tuple[str, ...]) -> str:
    replicate, level, branch = parts[:3]  # replicate_R/level_L/BRANCH/result.json
    return f"r{replicate.removeprefix('replicate_')} L{level.removeprefix('level_')} {branch}"


def run_killed(out: Path, flags: list[str], env: dict[str, str], timeline: Timeline, moments: list[float]):
    """Kill the run at ``moments`` (sorted, seconds into ``timeline``), resuming each time, then let it finish.
    Each start is killed when it should have reached the moment (the time from where it resumes, its finished
    jobs, to the moment, plus a fresh process's warmup), and no sooner than the gap since the previous moment
    (a run slower than the uninterrupted one still gets that far). Returns the kills and the final run's stderr."""
    kills, previous = [], 0.0
    for moment in moments:
        before, jobs_done = _stamp(out), _jobs_done(out)
        proc = subprocess.Popen(imp_command(out, flags), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_claim(proc, out, before)
        delay, previous = max(moment - previous, moment - timeline.resumed_at(jobs_done)), moment
        try:
            proc.wait(timeout=delay)
            hit = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            hit = True
        left, done = len(list(out.rglob(".*.tmp"))), _jobs_done(out)
        kills.append(Kill(moment, timeline.running(done) if hit else "(finished)", delay, hit, done, left))
    final = subprocess.run(imp_command(out, flags), env=env, capture_output=True, text=True)
    if final.returncode != 0:
        raise SystemExit(f"the resumed run failed:\n{final.stderr}")
    return kills, final.stderr


def comparable(run: Path) -> tuple[dict[str, bytes], list[list[str]]]:
    """Every tensor file's bytes by path, and results.csv without its wall times."""
    tensors = {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*.safetensors"))}
    rows = list(csv.reader(io.StringIO((run / "results.csv").read_text())))
    wall = rows[0].index("wall_time_s")
    return tensors, [row[:wall] + row[wall + 1 :] for row in rows]


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two run directories (tensor files, results.csv minus wall times); [] if nothing."""
    (ta, ra), (tb, rb) = comparable(a), comparable(b)
    diff = [name for name in sorted(set(ta) | set(tb)) if ta.get(name) != tb.get(name)]
    return diff + (["results.csv"] if ra != rb else [])


def the_run(out: Path) -> Path:
    (run,) = (p.parent for p in out.glob("*/config.json"))
    return run


def print_kills(kills: list[Kill]) -> None:
    row = "{:>4}  {:>6}  {:<18}  {:>13}  {:>6}  {:>9}  {:>8}"
    print(row.format("kill", "at s", "killed in", "after claim s", "killed", "jobs done", "tmp left"))
    for i, k in enumerate(kills, 1):
        hit = "yes" if k.hit else "no"
        print(row.format(i, f"{k.moment:.2f}", k.job, f"{k.delay:.2f}", hit, k.jobs_done, k.temporaries))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="keep both run directories under this directory (default: a temporary one)")
    parser.add_argument("flags", nargs="*", help="flags of `ticketlab imp` (after --)")
    args = parser.parse_args()
    flags = args.flags or DEFAULT_FLAGS
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        start = time.monotonic()
        timeline = run_whole(root / "whole", flags, env)
        print(
            f"ticketlab imp {' '.join(flags)}: uninterrupted {time.monotonic() - start:.1f}s, "
            f"work {timeline.work:.1f}s, {len(timeline.done)} jobs"
        )
        rng = random.Random(args.seed)
        moments = sorted(rng.uniform(0, timeline.work) for _ in range(args.kills))
        start = time.monotonic()
        kills, stderr = run_killed(root / "killed", flags, env, timeline, moments)
        elapsed = time.monotonic() - start
        print(f"killed {sum(k.hit for k in kills)} of {len(kills)} times and resumed: {elapsed:.1f}s in all\n")
        print_kills(kills)
        warnings = [line for line in stderr.splitlines() if line.startswith("ticketlab: warning:")]
        diff = differences(the_run(root / "whole"), the_run(root / "killed"))
        files = len(comparable(the_run(root / "whole"))[0])
        print(f"\nwarnings on the final resume: {len(warnings)}")
        print(f"{files} tensor files and results.csv (minus wall_time_s): " + ("identical" if not diff else "DIFFER"))
        for name in diff:
            print(f"  differs: {name}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
