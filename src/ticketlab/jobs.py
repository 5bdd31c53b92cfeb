"""Training jobs: a workflow lists the independent jobs of a step (a level's ticket and baselines, a branch's
levels) before any runs, and hands the list to an executor.

A :class:`Job` says everything needed to train it anywhere: where it writes, how to build its starting network
and mask, the training config, data seed and start iteration, and the digests of what it was made from. The
executor here runs jobs one after another in this process; a batched or remote executor takes the same list.
Finishing a job writes its outputs, then its result record last, with every file's SHA-256.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from ticketlab import __version__ as ticketlab_version
from ticketlab import batched as B
from ticketlab import masks as M
from ticketlab.config import TrainConfig
from ticketlab.data import Dataset
from ticketlab.flops import job_flops
from ticketlab.problem import state_of
from ticketlab.prunable import check_zero_safe, density_all
from ticketlab.pruning.collapse import effective_density
from ticketlab.rundir import JobFiles, RunDir
from ticketlab.store import atomic_write_text, save_tensors, sha256_bytes, write_record
from ticketlab.tensorboard import TensorBoard, log_dir
from ticketlab.training import TRAIN_ACC_SAMPLE, Observer, SaveAt, TrainResult, train
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
    """Runs a list of independent jobs of ``run`` and returns their result records, in the list's order; jobs
    already finished (and intact) are read back, not trained."""

    def __call__(self, run: RunDir, jobs: Sequence[Job], *, progress: bool | None = False) -> list[dict[str, Any]]: ...


def run_jobs(
    run: RunDir,
    jobs: Sequence[Job],
    *,
    progress: bool | None = False,
    batch_jobs: str | int = "off",
    kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train the unfinished ``jobs`` of ``run`` in this process and return every job's result record.

    ``batch_jobs`` ("auto", "off" or K, see :mod:`ticketlab.batched`): jobs with the same data, training config
    and start step are trained together, in passes of at most K (evenly split). The passes are formed from the
    whole list, finished jobs included, and a pass with any unfinished job is trained whole, writing only the
    unfinished ones: a resumed run trains exactly the passes an uninterrupted one did, so it ends with the same
    bytes. Jobs that cannot be batched train one by one (the reason said once, unless ``progress`` is None).
    ``kernels``: sparse kernels for jobs trained one by one (:func:`ticketlab.training.train`). ``tensorboard``: a
    directory for each job's TensorBoard scalars (:mod:`ticketlab.tensorboard`).
    """
    setting = B.parse_setting(batch_jobs)
    records = [run.finished(job.files, job.inputs) for job in jobs]
    for chunk in _passes(run, jobs, setting, progress):
        if all(records[i] is not None for i in chunk):
            continue
        if len(chunk) == 1:
            job = jobs[chunk[0]]
            records[chunk[0]] = run_job(run, job, progress=progress, kernels=kernels, tensorboard=tensorboard)
            continue
        write = [records[i] is None for i in chunk]
        done = run_batch(run, [jobs[i] for i in chunk], write, progress=progress, tensorboard=tensorboard)
        for i, record in zip(chunk, done):
            records[i] = records[i] or record
    return records


def _passes(run: RunDir, jobs: Sequence[Job], setting: str | int, progress: bool | None) -> list[list[int]]:
    """The jobs' indices, in passes: jobs that can be stacked (same data, training config, start, architecture)
    in even chunks of at most the setting's size; each other job alone."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((id(job.data), job.train, job.start), []).append(i)
    passes: list[list[int]] = []
    for members in groups.values():
        size = 1
        if len(members) > 1 and setting != "off":
            model, _ = jobs[members[0]].build()
            job = jobs[members[0]]
            size = B.jobs_per_pass(setting, model, job.train, job.data.train.x.device, len(members))
            why = B.unbatchable(model, job.train, job.data, job.data.objective or CLASSIFICATION) if size > 1 else None
            if why is not None:
                size = 1
                _say_once(run, f"training jobs one by one: {why}", asked=setting != "auto", progress=progress)
        count = -(-len(members) // size)  # passes of at most `size`, as even as can be
        passes += [members[k * len(members) // count : (k + 1) * len(members) // count] for k in range(count)]
    return sorted(passes)


def _say_once(run: RunDir, text: str, *, asked: bool, progress: bool | None) -> None:
    """Why jobs train one by one, once per run: a warning when batching was asked for (``--batch-jobs K``), else
    a note (not printed by the quiet Python API, ``progress`` None)."""
    if text in run.said or (progress is None and not asked):
        return
    run.said.add(text)
    print(f"ticketlab: {'warning: ' if asked else ''}{text}", file=sys.stderr, flush=True)


def run_job(
    run: RunDir,
    job: Job,
    *,
    progress: bool | None = False,
    kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> dict[str, Any]:
    """Train one job and write its outputs; its ``result.json`` is written last, so it exists only for a
    complete job. Returns the result record."""
    model, mask = job.build()
    files = _start_files(run, job, model, mask)
    observers: list[Observer] = [
        Progress(job, mask, progress),
        *_rewind_saver(run, job, files),
        *_board(run, job, mask, tensorboard),
    ]
    result = train(
        model,
        job.data,
        job.train,
        mask=mask,
        data_seed=job.data_seed,
        start=job.start,
        observers=observers,
        kernels=kernels,
    )
    return finish(run, job, model, mask, result, files)


def run_batch(
    run: RunDir,
    jobs: Sequence[Job],
    write: Sequence[bool],
    *,
    progress: bool | None = False,
    tensorboard: str | Path | None = None,
) -> list[dict[str, Any] | None]:
    """Train ``jobs`` together (:func:`ticketlab.batched.train_batched`) and write those marked in ``write``;
    returns their result records (None for the others). Jobs whose networks turn out not to stack are trained
    one by one instead."""
    built = [job.build() for job in jobs]
    if len({B.signature(model) for model, _ in built}) != 1:
        return [
            run_job(run, job, progress=progress, tensorboard=tensorboard) if w else None for job, w in zip(jobs, write)
        ]
    files = [_start_files(run, job, model, mask) if w else {} for job, (model, mask), w in zip(jobs, built, write)]
    observers = [
        [
            Progress(job, mask, progress if w else None),
            *(_rewind_saver(run, job, f) if w else []),
            *(_board(run, job, mask, tensorboard) if w else []),
        ]
        for job, (_, mask), w, f in zip(jobs, built, write, files)
    ]
    results = B.train_batched(
        [model for model, _ in built],
        jobs[0].data,
        jobs[0].train,
        masks=[mask for _, mask in built],
        data_seeds=[job.data_seed for job in jobs],
        start=jobs[0].start,
        observers=observers,
    )
    return [
        finish(run, job, model, mask, result, f, batched=len(jobs)) if w else None
        for job, (model, mask), result, w, f in zip(jobs, built, results, write, files)
    ]


def _start_files(run: RunDir, job: Job, model: nn.Module, mask: M.Mask) -> dict[str, str]:
    """Save a job's starting weights (and its own mask), before training; returns their SHA-256 by path."""
    check_zero_safe(model, mask)  # a weight-normed row pruned whole would train on NaN
    files: dict[str, str] = {}
    init_file = job.init_file or job.files.init
    files[run.rel(init_file)] = save_tensors(init_file, state_of(model))
    if job.mask_file is not None:
        files[run.rel(job.mask_file)] = M.save_mask(job.mask_file, mask)
    return files


def trained_on(device: torch.device) -> str:
    """What a job trained on, in one line: the device (a GPU by name) and the versions of ticketlab, torch, Python."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({platform.machine()})"
    return f"{where}; ticketlab {ticketlab_version}, torch {torch.__version__}, Python {platform.python_version()}"


def _board(run: RunDir, job: Job, mask: M.Mask, tensorboard: str | Path | None) -> list[Observer]:
    """The job's TensorBoard writer, when a directory was given."""
    if tensorboard is None:
        return []
    return [TensorBoard(log_dir(tensorboard, run.path.name, job.files), mask)]


def _rewind_saver(run: RunDir, job: Job, files: dict[str, str]) -> list[Observer]:
    """The observer saving the weights at the rewind step (level 0), into ``files``."""
    if job.rewind is None:
        return []
    k, path = job.rewind

    def save_rewind(m: nn.Module) -> None:
        files[run.rel(path)] = save_tensors(path, state_of(m))

    return [SaveAt(k, save_rewind)]


def finish(
    run: RunDir,
    job: Job,
    model: nn.Module,
    mask: M.Mask,
    result: TrainResult,
    files: dict[str, str],
    *,
    batched: int = 1,
) -> dict[str, Any]:
    """Write a trained job's final weights, metrics and result record (with every file's SHA-256); ``batched``:
    how many jobs it trained together with (itself included)."""
    f = job.files
    data = job.data
    example = data.train.inputs(slice(0, 1))
    evaluated = len(data.test) + (len(data.val) if data.val is not None else 0)
    flops = job_flops(
        model,
        mask,
        example,
        examples_trained=(result.metrics[-1]["step"] - job.start) * job.train.batch_size,
        examples_evaluated=len(result.metrics) * evaluated + min(TRAIN_ACC_SAMPLE, len(data.train)),
    )
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
        "effective_density": effective_density(model, mask, example, (data.objective or CLASSIFICATION).logits),
        "layer_densities": M.layer_densities(mask),
        **result.summary(),
        **result.perplexities(),
        "batched_with": batched,
        **flops,
        "trained_on": trained_on(data.train.x.device),
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

    def wants_model(self, step: int) -> bool:
        return False

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
