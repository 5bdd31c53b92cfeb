"""A run directory: where every file of a run lives, what it records, and what can be trusted when read back.

```
RUN/config.json  results.csv  plot.png
RUN/replicate_R/level_0/   init.safetensors  rewind.safetensors  mask.safetensors  ticket/
RUN/replicate_R/level_L/   mask.safetensors  level.json  ticket/  reinit/  random_prune/  BRANCH/
RUN/replicate_R/level_L/BRANCH/   final.safetensors  metrics.jsonl  result.json  (init / mask.safetensors)
```

A job (replicate, level, branch) is complete when its ``result.json`` exists and verifies: the record carries
the SHA-256 of its own content, of every file the job wrote, and of what it was made from (its ``inputs``).
A level's mask is recorded in ``level.json`` with its digest and the number of weights kept. Whatever fails --
a damaged or edited file, a mask that is not a subset of its parent level's or not of the recorded count --
is reported in one warning line and computed again; jobs being deterministic, the run ends
with the results an undamaged one gives.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.config import ExperimentConfig, from_dict
from ticketlab.errors import TicketlabError
from ticketlab.prunable import to_torch_pruning
from ticketlab.store import (
    DamagedFile,
    RunLock,
    load_tensors,
    read_record,
    sha256_file,
    verify,
    write_csv,
    write_record,
)

TRUNK = ("ticket", "reinit", "random_prune")  # the jobs `ticketlab imp` trains at a level
RESULT_COLUMNS = [
    "replicate",
    "level",
    "branch",
    "density",  # over the pruned tensors
    "density_all",  # over all of the model's weights (absent from records made before it)
    "effective_density",  # kept weights on some input-to-output path (absent from records made before it)
    "final_test_acc",
    "best_test_acc",
    "early_stop_step",
    "train_acc",
    "wall_time_s",
    "train_flops",  # theoretical training FLOPs of the job, kept weights only (ticketlab.flops; absent before it)
    "dense_flops",  # the same job's on the dense network
    "final_test_ppl",  # language models only: exp(per-token test loss) at the end, and at the early-stop step
    "best_test_ppl",
]
OPTIONAL_COLUMNS = ("final_test_ppl", "best_test_ppl")  # written only when some row has them


def warn(text: str) -> None:
    print(f"ticketlab: warning: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class JobFiles:
    """The files of one training job: ``replicate_R/level_L/BRANCH/``."""

    path: Path
    replicate: int
    level: int
    branch: str

    @property
    def init(self) -> Path:  # the weights it trained from (not for level 0, whose theta_0 is the level's)
        return self.path / "init.safetensors"

    @property
    def final(self) -> Path:
        return self.path / "final.safetensors"

    @property
    def mask(self) -> Path:  # a mask of its own (the random baseline, branches)
        return self.path / "mask.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.path / "result.json"


@dataclass(frozen=True)
class LevelFiles:
    """The files of one level: ``replicate_R/level_L/``."""

    path: Path

    @property
    def init(self) -> Path:  # level 0: theta_0
        return self.path / "init.safetensors"

    @property
    def rewind(self) -> Path:  # level 0: theta_k
        return self.path / "rewind.safetensors"

    @property
    def mask(self) -> Path:
        return self.path / "mask.safetensors"

    @property
    def record(self) -> Path:  # level >= 1: the mask's digest and kept count
        return self.path / "level.json"

    def dense_at(self, step: int) -> Path:  # level 0: the dense network after ``step`` iterations (a replay)
        return self.path / f"dense_{step}it.safetensors"


class RunDir:
    """The directory of one run (``imp`` returns one): paths, identity, verified records, results."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.writing = False  # holding the lock, computing what is missing or damaged
        self.said: set[str] = set()  # notes already printed for this run (said once, not per level)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def results_file(self) -> Path:
        return self.path / "results.csv"

    @property
    def plot_file(self) -> Path:
        return self.path / "plot.png"

    def level(self, replicate: int, level: int) -> LevelFiles:
        return LevelFiles(self.path / f"replicate_{replicate}" / f"level_{level}")

    def job(self, replicate: int, level: int, branch: str) -> JobFiles:
        return JobFiles(self.level(replicate, level).path / branch, replicate, level, branch)

    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run's lock (:class:`RunLock`) to compute in it."""
        with RunLock(self.path):
            self.writing = True
            try:
                yield self
            finally:
                self.writing = False

    def rel(self, path: Path) -> str:
        """``path`` relative to the run directory, as records name files."""
        return Path(path).relative_to(self.path).as_posix()

    # ------------------------------------------------------------------------------------------- identity

    def saved(self) -> dict[str, Any]:
        """The saved ``config.json`` (config, run hash, identity), verified; TicketlabError when this is not a run
        directory or the file is damaged."""
        if not self.config_file.exists():
            raise TicketlabError(f"{self.path} has no config.json: is it a ticketlab run directory?")
        try:
            saved = read_record(self.config_file)
            config = saved["config"]
        except (DamagedFile, KeyError, TypeError) as e:
            why = e.why if isinstance(e, DamagedFile) else "no config in it"
            raise TicketlabError(
                f"{self.config_file} is damaged ({why}); run the command that made this run again to rewrite it"
            ) from None
        if not isinstance(config, dict):
            raise TicketlabError(f"{self.config_file} is damaged (no config in it); run the command again")
        return saved

    def config(self) -> ExperimentConfig:
        """The run's config; a run saved before ``prune.ladder`` existed counted per level, and still does."""
        config = self.saved()["config"]
        if isinstance(config.get("prune"), dict) and "ladder" not in config["prune"]:
            config = {**config, "prune": {**config["prune"], "ladder": "per-level"}}
        return from_dict(config)

    @property
    def user_model(self) -> bool:
        """Whether the run trained the caller's own ``nn.Module`` (which the command line cannot rebuild)."""
        return "weights" in self.saved()

    def claim(self, config: ExperimentConfig, identity: dict[str, Any]) -> None:
        """Make this directory the run of ``config`` on ``identity`` (refused if it holds another experiment);
        a damaged ``config.json`` is written again, with a warning."""
        mine = {"hash": config.run_hash(), **identity}
        if self.config_file.exists():
            try:
                saved = read_record(self.config_file)
            except DamagedFile as e:
                warn(f"{e.path} is damaged ({e.why}); writing it again")
            else:
                diff = [k for k in mine if saved.get(k) != mine[k]]
                if diff:
                    raise TicketlabError(
                        f"{self.path} holds a different experiment ({', '.join(diff)} differ); choose another "
                        "output directory"
                    )
        write_record(self.config_file, {"config": config.to_dict(), **mine})

    # --------------------------------------------------------------------------------------- job records

    def finished(
        self, job: JobFiles, inputs: dict[str, str] | None = None, *, quiet: bool = False, repair: bool = True
    ) -> dict | None:
        """The job's result record if the job is complete and intact, else None.

        Intact: the record verifies, every file it lists has the recorded SHA-256, and it was made from ``inputs``
        (digests by role; the roles both name are compared). Anything else is reported in one warning line (unless
        ``quiet``); with ``repair``, by a process holding the run's lock, the record is removed so that the job runs
        again. Records of ticketlab 0.1, which list no files, are taken as they are.
        """
        if not job.result.exists():
            return None
        try:
            record = read_record(job.result)
            for rel, digest in record.get("files", {}).items():
                if sha256_file(self.path / rel) != digest:
                    raise DamagedFile(self.path / rel, "its bytes differ from the SHA-256 recorded when it was written")
            made_from = record.get("inputs") or {}
            changed = sorted(k for k in made_from if k in (inputs or {}) and inputs[k] != made_from[k])
            if changed:  # (what both the record and the caller name: a baseline and its branch re-run agree)
                raise DamagedFile(job.result, f"made from another {', '.join(changed)} than the one now on disk")
        except DamagedFile as e:
            repairing = repair and self.writing
            if not quiet:
                then = "computing it again" if repairing else "left out; the command that made it computes it again"
                warn(f"{e.path} is damaged ({e.why}); {self.rel(job.path)}: {then}")
            if repairing:  # the job runs again; until it has finished, it is not done
                job.result.unlink(missing_ok=True)
            return None
        return record

    def recorded(self, job: JobFiles, path: Path) -> str | None:
        """The SHA-256 that a finished job recorded for one of its files (None for a 0.1 record)."""
        return read_record(job.result).get("files", {}).get(self.rel(path))

    # ------------------------------------------------------------------------------------------- masks

    def level_mask(
        self, replicate: int, level: int, parent: M.Mask, device: torch.device | str
    ) -> tuple[M.Mask, str] | None:
        """Level ``level``'s saved mask and its SHA-256, if it is intact: it has the digest and count recorded in
        ``level.json`` and is a subset of ``parent``. Otherwise None (it must be computed again), with a warning
        when it was damaged. A mask without its record (a run killed between the two, or made by ticketlab 0.1)
        is computed again too: that is cheap and gives the same mask."""
        files = self.level(replicate, level)
        if not (files.mask.exists() and files.record.exists()):
            return None
        try:
            record = read_record(files.record)
            digest = sha256_file(files.mask)
            if digest != record.get("mask"):
                raise DamagedFile(files.mask, "its bytes differ from the SHA-256 recorded in level.json")
            mask = M.load_mask(files.mask, device)
            if sorted(mask) != sorted(parent) or any(mask[n].shape != parent[n].shape for n in mask):
                raise DamagedFile(files.mask, "it does not cover the parent mask's tensors")
            if not M.is_subset(mask, parent):
                raise DamagedFile(files.mask, "it keeps weights its parent level pruned")
            if M.count(mask) != record.get("kept"):
                raise DamagedFile(
                    files.mask, f"it keeps {M.count(mask)} weights, not the recorded {record.get('kept')}"
                )
        except DamagedFile as e:
            warn(f"{e.path} is damaged ({e.why}); computing the mask of {self.rel(files.path)} again")
            return None
        return mask, digest

    def save_level_mask(self, replicate: int, level: int, mask: M.Mask) -> str:
        """Save a level's mask, then its record; returns the mask file's SHA-256."""
        files = self.level(replicate, level)
        digest = M.save_mask(files.mask, mask)
        write_record(files.record, {"mask": digest, "kept": M.count(mask)})
        return digest

    # ------------------------------------------------------------------------------------------- results

    def results(self, config: ExperimentConfig, *, quiet: bool = False) -> list[dict[str, Any]]:
        """Rows of every intact finished job within the configured replicates and levels: the trunk (ticket and
        its baselines) first, then any branches run off it, in name order. Damaged records are left out."""
        rows = []
        for r in range(config.imp.replicates):
            for level in range(level_count(config) + 1):
                trunk = ("ticket", *config.imp.baselines) if level else ("ticket",)
                here = self.level(r, level).path
                others = sorted(p.name for p in here.iterdir() if p.is_dir()) if here.is_dir() else []
                for branch in [*trunk, *(b for b in others if b not in trunk)]:
                    # the trunk's jobs were checked (and computed again) before; these rows are only read
                    record = self.finished(self.job(r, level, branch), quiet=quiet, repair=False)
                    # a baseline the trunk no longer asks for is left out, unless a branch command ran it
                    if record is not None and (branch in trunk or branch not in TRUNK or "options" in record):
                        rows.append({k: v for k, v in record.items() if k in RESULT_COLUMNS})
        return rows

    def rows(self, *, quiet: bool = False) -> list[dict[str, Any]]:
        """:meth:`results` under the saved config."""
        return self.results(self.config(), quiet=quiet)

    def write_results(self, rows: list[dict[str, Any]]) -> None:
        columns = [c for c in RESULT_COLUMNS if c not in OPTIONAL_COLUMNS or any(c in r for r in rows)]
        write_csv(self.results_file, rows, columns)

    def finished_levels(self, config: ExperimentConfig, replicate: int = 0) -> list[int]:
        """Pruned levels (>= 1) whose ticket has finished."""
        return [
            lv
            for lv in range(1, level_count(config) + 1)
            if self.finished(self.job(replicate, lv, "ticket"), quiet=True, repair=False) is not None
        ]

    # ------------------------------------------------------------------------------------------- tickets

    def ticket(self, level: int, replicate: int = 0, device: str | torch.device = "cpu") -> Ticket:
        """The ticket of a finished level: its mask and the (masked) weights it trains from."""
        job = self.job(replicate, level, "ticket")
        record = self.finished(job)
        if record is None:
            raise TicketlabError(f"level {level} of replicate {replicate} in {self.path} has not finished")
        files = self.level(replicate, level)
        init = job.init if level else files.init
        # the mask the ticket trained with: an input of a pruned level's ticket, an output of level 0's
        digest = record.get("inputs", {}).get("mask") if level else record.get("files", {}).get(self.rel(files.mask))
        if digest:  # records of ticketlab 0.1 hold none
            verify(files.mask, digest)
        mask = M.load_mask(files.mask, device)
        state = load_tensors(init, device, sha256=record.get("files", {}).get(self.rel(init)))
        return Ticket(level, M.density(mask), mask, state)


def level_count(config: ExperimentConfig) -> int:
    """Pruned levels of a run (one when pruning straight to a target density)."""
    return 1 if config.imp.target_density is not None else config.imp.levels


@dataclass
class Ticket:
    """A winning ticket: the mask and the rewound (masked) weights it trains from."""

    level: int
    density: float
    mask: M.Mask
    state: dict[str, torch.Tensor]

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the rewound weights into ``model`` and zero its pruned weights; TicketlabError when the model is not
        the one the ticket was found on."""
        self._load(model)
        return M.apply_mask(model, self.mask)

    def to_torch_pruning(self, model: nn.Module) -> nn.Module:
        """Load the rewound weights into ``model`` and attach the mask as ``torch.nn.utils.prune`` masks
        (``weight_orig`` and ``weight_mask``, as PyTorch's own pruning leaves a layer), in place."""
        self._load(model)
        return to_torch_pruning(model, self.mask)

    def _load(self, model: nn.Module) -> None:
        try:
            model.load_state_dict(self.state)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise TicketlabError(
                f"the ticket does not fit this model ({first}); load it into the architecture it was found on, "
                "not pruned with torch.nn.utils.prune"
            ) from None


def load_ticket(run_dir: str | Path, level: int, replicate: int = 0, device: str | torch.device = "cpu") -> Ticket:
    """The ticket of ``level`` in a run directory (see :meth:`RunDir.ticket`)."""
    return RunDir(run_dir).ticket(level, replicate, device)
