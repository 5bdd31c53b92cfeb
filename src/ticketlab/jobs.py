"""Training jobs: a workflow lists the independent jobs of a step (a level's ticket and baselines, a branch's
levels) before any runs, and hands the list to an executor.

A :class:`Job` says everything needed to train it anywhere: where it writes, how to build its starting network
and mask, the training config, data seed and start iteration, and the digests of what it was made from. The
executor here runs jobs one after another in this process; a batched or remote executor takes the same list.
Finishing a job writes its outputs, then its result record last, with every file's SHA-256.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn
from tqdm import tqdm

from ticketlab import masks as M
from ticketlab.config import TrainConfig
from ticketlab.data import Dataset
from ticketlab.problem import state_of
from ticketlab.prunable import check_zero_safe, density_all
from ticketlab.pruning.collapse import effective_density
from ticketlab.rundir import JobFiles, RunDir
from ticketlab.store import atomic_write_text, save_tensors, sha256_bytes, write_record
from ticketlab.training import Observer, SaveAt, TrainResult, train
from ticketlab.training.objectives import CLASSIFICATION


@dataclass(frozen=True)
class Job:
    """One training job of a run."""

    files: JobFiles
    build: Callable[[], tuple[nn.Module, M.Mask]]  # its network at the starting weights, and its mask
    train: TrainConfig
    data: Dataset
    data_seed: int
    start: int  # the iteration training starts at (the rewind step k, usually)
    inputs: dict[str, str] = field(default_factory=dict)  # SHA-256 of what it was made from, by role
    label: str = ""  # its name in results, when not the directory's (a branch with its options)
    options: dict[str, Any] | None = None  # a branch's options, recorded
    init_file: Path | None = None  # where its starting weights are saved (default: the job's init)
    mask_file: Path | None = None  # where its mask is saved, when it has one of its own
    rewind: tuple[int, Path] | None = None  # (k, path): save the weights after k iterations (level 0)


class Executor(Protocol):
    """Runs a list of independent jobs of ``run`` and returns their result records, in the list's order."""

    def __call__(self, run: RunDir, jobs: Sequence[Job], *, progress: bool = False) -> list[dict[str, Any]]: ...


def run_jobs(run: RunDir, jobs: Sequence[Job], *, progress: bool = False) -> list[dict[str, Any]]:
    """The sequential executor: train each job in turn, in this process; returns their result records."""
    return [run_job(run, job, progress=progress) for job in jobs]


def run_job(run: RunDir, job: Job, *, progress: bool = False) -> dict[str, Any]:
    """Train one job and write its outputs; its ``result.json`` is written last, so it exists only for a
    complete job. Returns the result record."""
    model, mask = job.build()
    check_zero_safe(model, mask)  # a weight-normed row pruned whole would train on NaN
    files: dict[str, str] = {}
    init_file = job.init_file or job.files.init
    files[run.rel(init_file)] = save_tensors(init_file, state_of(model))
    if job.mask_file is not None:
        files[run.rel(job.mask_file)] = M.save_mask(job.mask_file, mask)
    observers: list[Observer] = [Progress(job, mask, progress)]
    if job.rewind is not None:
        k, path = job.rewind

        def save_rewind(m: nn.Module) -> None:
            files[run.rel(path)] = save_tensors(path, state_of(m))

        observers.append(SaveAt(k, save_rewind))
    result = train(model, job.data, job.train, mask=mask, data_seed=job.data_seed, start=job.start, observers=observers)
    return finish(run, job, model, mask, result, files)


def finish(
    run: RunDir, job: Job, model: nn.Module, mask: M.Mask, result: TrainResult, files: dict[str, str]
) -> dict[str, Any]:
    """Write a trained job's final weights, metrics and result record (with every file's SHA-256)."""
    f = job.files
    files[run.rel(f.final)] = save_tensors(f.final, state_of(model))
    metrics = "".join(json.dumps(row) + "\n" for row in result.metrics)
    atomic_write_text(f.metrics, metrics)
    files[run.rel(f.metrics)] = sha256_bytes(metrics.encode())
    record = {
        "replicate": f.replicate,
        "level": f.level,
        "branch": job.label or f.branch,
        **({"options": job.options} if job.options is not None else {}),
        "density": M.density(mask),
        "density_all": density_all(model, mask),
        "effective_density": effective_density(
            model, mask, job.data.train.inputs(slice(0, 1)), (job.data.objective or CLASSIFICATION).logits
        ),
        "layer_densities": M.layer_densities(mask),
        **result.summary(),
        "files": files,
        "inputs": job.inputs,
    }
    write_record(f.result, record)
    return record


class Progress(Observer):
    """A live bar per job on a terminal (``live``); one summary line per job otherwise; nothing when ``live`` is
    None (the Python API's ``progress=False``)."""

    def __init__(self, job: Job, mask: M.Mask, live: bool | None):
        f = job.files
        density = 100 * M.density(mask)
        self.desc = f"rep {f.replicate} level {f.level:2d} {f.branch:<12} {density:6.2f}%"
        self.short = f"r{f.replicate} L{f.level:<2} {f.branch:<12} {density:6.2f}%"
        self.live, self.bar, self.last_acc = live, None, float("nan")

    def on_begin(self, model: nn.Module, start: int, end: int) -> None:
        if not self.live:
            return
        # Some (pseudo-)terminals report a size of 0x0, with which tqdm hides the bar; fall back to 100x24.
        size = shutil.get_terminal_size()
        self.bar = tqdm(
            total=end - start,
            desc=self.short,
            unit="it",
            leave=True,
            file=sys.stderr,
            ncols=min(size.columns or 100, 120),
            nrows=size.lines or 24,
            # short enough that the accuracy fits on an 80-column line
            bar_format="{desc} {bar:10} {n_fmt}/{total_fmt} {elapsed}<{remaining} {postfix}",
        )

    def on_eval(self, step: int, row: dict[str, Any]) -> None:
        self.last_acc = row["test_acc"]

    def on_step(self, step: int, model: nn.Module) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if step % 50 == 0:
                self.bar.set_postfix_str(f"test acc {self.last_acc:.3f}", refresh=False)

    def on_end(self, model: nn.Module, result: TrainResult) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"test acc {result.final_test_acc:.3f}")
            self.bar.close()
            return
        if self.live is None:
            return
        print(
            f"{self.desc}  test acc {result.final_test_acc:.4f}  (early-stop {result.best_test_acc:.4f} "
            f"@ {result.early_stop_step} it, {result.wall_time_s:.1f}s)",
            file=sys.stderr,
            flush=True,
        )
