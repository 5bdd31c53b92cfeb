"""Iterative magnitude pruning with rewinding, and its baselines, as one resumable loop.

For each replicate: train the dense network (level 0), saving the weights at the rewind step k;
then per level: prune the previous level's trained ticket, rewind the survivors to step k, train;
and train the baselines (random re-init of the ticket's mask, random mask at the ticket's densities).
Each (replicate, level, branch) is a job in the run directory; completed jobs are skipped, so a
killed run resumes where it stopped and, jobs being deterministic, ends with the same results.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab import prunable as P
from ticketlab import scores as S
from ticketlab.config import ExperimentConfig
from ticketlab.data import Dataset, iterations_per_epoch
from ticketlab.data import batches as batch_iter
from ticketlab.errors import TicketlabError
from ticketlab.pruning import (
    Group,
    alive_units,
    at_level,
    collapse,
    compound,
    expand,
    find_units,
    one_shot_groups,
    plan_groups,
    prune,
    prune_in_rounds,
    random_mask,
)
from ticketlab.scores import Examples
from ticketlab.steps import Step
from ticketlab.store import (
    JobDir,
    RunLock,
    atomic_write_text,
    load_tensors,
    read_json,
    save_tensors,
    write_csv,
    write_json,
)
from ticketlab.training import TrainResult, train

BRANCHES = ("ticket", "reinit", "random_prune")
RESULT_COLUMNS = [
    "replicate",
    "level",
    "branch",
    "density",
    "final_test_acc",
    "best_test_acc",
    "early_stop_step",
    "train_acc",
    "wall_time_s",
]


def derive_seed(*parts: Any) -> int:
    """A stable 60-bit seed from any parts (base seed, replicate, level, purpose)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


@dataclass
class Problem:
    """What IMP trains: the data, and how to make the network.

    ``init_model(replicate)`` returns that replicate's original network theta_0;
    ``fresh_model(seed)`` returns a newly initialised one (the random re-init baseline).
    """

    data: Dataset
    init_model: Callable[[int], nn.Module]
    fresh_model: Callable[[int], nn.Module]
    identity: dict[str, Any]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BatchNorm statistics too), in the standard memory layout."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


class _Progress:
    """A live bar per job on a terminal; one summary line per job otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def job(self, desc: str, total: int):
        if not self.enabled:
            return None
        from tqdm import tqdm

        # Some (pseudo-)terminals report a size of 0x0, with which tqdm hides the bar; fall back to 100x24.
        size = shutil.get_terminal_size()
        return tqdm(
            total=total,
            desc=desc,
            unit="it",
            leave=True,
            file=sys.stderr,
            ncols=min(size.columns or 100, 120),
            nrows=size.lines or 24,
            # short enough that the accuracy fits on an 80-column line
            bar_format="{desc} {bar:10} {n_fmt}/{total_fmt} {elapsed}<{remaining} {postfix}",
        )


def run_imp(
    config: ExperimentConfig,
    problem: Problem,
    run_dir: Path,
    *,
    progress: bool = False,
    start_mask: M.Mask | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment in ``run_dir`` and return the rows of ``results.csv``.

    ``start_mask``: level 0's mask instead of the full one (weights forbidden from the start, as the disjoint
    tickets experiment does); iterative pruning only, since one-shot levels prune the full network."""
    run_dir = Path(run_dir)
    plan = _plan(config, problem)  # every check a user can fail, before anything is written
    if start_mask is not None:
        if from_full(config):
            raise TicketlabError("a starting mask needs iterative pruning (not --one-shot or --at-init)")
        if "random_prune" in config.imp.baselines:
            raise TicketlabError("the random pruning baseline would draw forbidden weights; drop it with a start mask")
        if sorted(start_mask) != sorted(plan.names) or plan.units is not None:
            raise TicketlabError(f"a starting mask must cover exactly the prunable weights {plan.names}")
        problem = Problem(
            problem.data,
            problem.init_model,
            problem.fresh_model,
            {**problem.identity, "start_mask": _mask_digest(start_mask)},
        )
    with RunLock(run_dir):
        _check_identity(run_dir, config, problem)
        write_json(run_dir / "config.json", {"config": config.to_dict(), "hash": config.run_hash(), **problem.identity})
        bars = _Progress(progress)
        for replicate in range(config.imp.replicates):
            _run_replicate(config, problem, plan, run_dir, replicate, bars, start_mask)
        rows = collect_results(run_dir, config)
        write_csv(run_dir / "results.csv", rows, RESULT_COLUMNS)
    return rows


def _check_identity(run_dir: Path, config: ExperimentConfig, problem: Problem) -> None:
    path = run_dir / "config.json"
    if not path.exists():
        return
    saved = read_json(path)
    mine = {"hash": config.run_hash(), **problem.identity}
    diff = [k for k in mine if saved.get(k) != mine[k]]
    if diff:
        raise TicketlabError(
            f"{run_dir} holds a different experiment ({', '.join(diff)} differ); choose another output directory"
        )


def from_full(config: ExperimentConfig) -> bool:
    """Whether each level prunes the dense network (one-shot, at init) rather than the previous level's ticket."""
    return config.imp.one_shot or config.imp.at_init


def level_count(config: ExperimentConfig) -> int:
    return 1 if config.imp.target_density is not None else config.imp.levels


@dataclass(frozen=True)
class _Plan:
    names: list[str]  # prunable parameters
    groups: list[Group]  # layers (units, with --units) pruned together, and their fraction per level
    k: int  # rewind iteration
    total: int  # training iterations per level
    units: list | None  # the neuron / filter layers, when pruning is structured


def _plan(cfg: ExperimentConfig, problem: Problem) -> _Plan:
    model = problem.init_model(0)
    p = cfg.prune
    names = P.prunable_names(model, prune_biases=p.prune_biases, ignore=p.ignore)
    if not names:
        raise TicketlabError("the model has no prunable parameters (linear/conv weights) left after --ignore")
    S.get(p.criterion, at_init=cfg.imp.at_init)  # a known criterion, that can score what it is given
    overrides = p.overrides()
    output = P.output_layer_name(model)
    units = None
    pruned = names
    if p.units != "none":
        S.get(p.units, units=True)
        units = find_units(model, problem.data.input_shape)
        if p.units == "bn":  # network slimming scores the layers that have a BatchNorm
            units = [u for u in units if u.norm is not None]
        pruned = [f"{u.layer}.weight" for u in units if f"{u.layer}.weight" in names]
        if not pruned:
            raise TicketlabError(
                "structured pruning found no layer whose neurons or filters can be removed (a layer qualifies when "
                "its outputs reach only other linear/conv layers, through activations, pooling and BatchNorm"
                + (", and --units bn needs a BatchNorm after it)" if p.units == "bn" else ")")
            )
        units = [u for u in units if f"{u.layer}.weight" in pruned]
        stray = sorted(set(overrides) - set(pruned))
        if stray:
            raise TicketlabError(
                f"--layer-fractions names {stray}, whose neurons cannot be pruned as units; unit layers: {pruned}"
            )
    # the first / last layer kept dense (an explicit --layer-fractions for it wins); never-pruned layers need nothing
    for which, layer in (("first", names[0]), ("last", output)):
        if which in p.keep_dense and layer in pruned:
            overrides.setdefault(layer, 0.0)
    groups = plan_groups(
        pruned,
        kinds=P.layer_kinds(model),
        output_name=output,
        strategy=p.strategy,
        fraction=p.fraction,
        conv_fraction=p.conv_fraction,
        output_fraction=p.output_fraction,
        overrides=overrides,
    )
    if cfg.imp.target_density is not None:  # an unreachable target is the user's to fix, before anything runs
        sizes = dict(zip(pruned, (u.count for u in units))) if units else {n: _numel(model, n) for n in names}
        one_shot_groups(groups, sizes, cfg.imp.target_density)
    per_epoch = iterations_per_epoch(len(problem.data.train), cfg.train.batch_size)
    k = Step.parse(cfg.imp.rewind).iterations(per_epoch)
    total = Step.parse(cfg.train.steps).iterations(per_epoch)
    if total < 1:
        raise TicketlabError(f"--steps {cfg.train.steps} trains for no iterations; give a positive length")
    if k >= total:
        raise TicketlabError(
            f"rewind point {cfg.imp.rewind} ({k} it) must come before the end of training ({total} it)"
        )
    return _Plan(names, groups, k, total, units)


def _numel(model: nn.Module, name: str) -> int:
    return dict(model.named_parameters())[name].numel()


def _mask_digest(mask: M.Mask) -> str:
    h = hashlib.sha256()
    for n in sorted(mask):
        h.update(n.encode())
        h.update(mask[n].cpu().numpy().tobytes())
    return h.hexdigest()[:10]


def _run_replicate(
    cfg: ExperimentConfig, problem: Problem, plan: _Plan, run_dir: Path, r: int, bars, start_mask=None
) -> None:
    data, seed = problem.data, cfg.imp.seed
    data_seed = derive_seed(seed, r, "data")
    model = problem.init_model(r)
    k = plan.k

    # Level 0: the dense network, saving theta_0 and theta_k.
    dense = JobDir(run_dir, r, 0, "ticket")
    level0 = dense.path.parent
    if not dense.done:
        full = (
            _full_mask(model, plan)
            if start_mask is None
            else {n: m.to(problem.data.train.x.device) for n, m in start_mask.items()}
        )
        save_tensors(level0 / "init.safetensors", _state(model))
        M.save_mask(level0 / "mask.safetensors", full)
        result = _train_job(
            model,
            data,
            cfg,
            full,
            data_seed,
            0,
            bars,
            dense,
            save_at=k,
            on_save=lambda m: save_tensors(level0 / "rewind.safetensors", _state(m)),
        )
        _finish(dense, model, full, result)
    device = data.train.x.device
    rewind_state = load_tensors(level0 / "rewind.safetensors", device)
    mask = M.load_mask(level0 / "mask.safetensors", device)

    for level in range(1, level_count(cfg) + 1):
        level_dir = JobDir(run_dir, r, level, "ticket").path.parent
        mask_path = level_dir / "mask.safetensors"
        if mask_path.exists():
            new_mask = M.load_mask(mask_path, device)
        else:
            new_mask = _next_mask(cfg, problem, plan, run_dir, r, level, mask, rewind_state)
            _check_collapse(cfg, problem, new_mask, f"replicate {r} level {level}")
            M.save_mask(mask_path, new_mask)
        mask = new_mask

        job = JobDir(run_dir, r, level, "ticket")
        if not job.done:
            model = problem.init_model(r)
            model.load_state_dict(rewind_state)
            M.apply_mask(model, mask)
            save_tensors(job.file("init.safetensors"), _state(model))
            _finish(job, model, mask, _train_job(model, data, cfg, mask, data_seed, k, bars, job))

        for branch in cfg.imp.baselines:
            job = JobDir(run_dir, r, level, branch)
            if job.done:
                continue
            if branch == "reinit":
                model, bmask = problem.fresh_model(derive_seed(seed, r, level, "reinit")), mask
            else:
                bmask = _random_baseline(plan, problem, mask, derive_seed(seed, r, level, "random_prune"))
                M.save_mask(job.file("mask.safetensors"), bmask)
                model = problem.init_model(r)
                model.load_state_dict(rewind_state)
            M.apply_mask(model, bmask)
            _finish(job, model, bmask, _train_job(model, data, cfg, bmask, data_seed, k, bars, job))


def _full_mask(model: nn.Module, plan: _Plan) -> M.Mask:
    full = M.full_mask(model, plan.names)
    if plan.units is None:
        return full
    return expand(plan.units, alive_units(plan.units, full), model, full)  # with the units' biases and norms


def _next_mask(cfg: ExperimentConfig, problem: Problem, plan: _Plan, run_dir, r, level, mask, start_state) -> M.Mask:
    """The mask of ``level``: prune the previous ticket (iterative), or the dense network (one-shot: as trained;
    at init: at the rewind point). After-training criteria score the weights the pruned network ended with
    against those it started from (theta_k); the others score the network itself."""
    device = start_state[next(iter(start_state))].device
    if cfg.imp.at_init:
        source = start_state
    else:
        source_level = 0 if cfg.imp.one_shot else level - 1
        source = load_tensors(JobDir(run_dir, r, source_level, "ticket").file("final.safetensors"), device)
    model = problem.init_model(r)
    model.load_state_dict(source)
    base = {n: torch.ones_like(m) for n, m in mask.items()} if from_full(cfg) else mask
    M.apply_mask(model, base)

    sizes = {n: m.numel() for n, m in mask.items()}
    if plan.units is not None:
        sizes = {f"{u.layer}.weight": u.count for u in plan.units}
    groups = plan.groups
    if not from_full(cfg):
        groups = at_level(groups, level)
    elif cfg.imp.target_density is not None:
        groups = one_shot_groups(groups, sizes, cfg.imp.target_density)
    else:
        groups = [Group(g.members, compound(g.fraction, level), g.erk) for g in groups]

    seed = derive_seed(cfg.imp.seed, r, level)
    if plan.units is not None:
        unit_scores = S.score(cfg.prune.units, model=model, mask=base, units=plan.units)
        scores = {f"{k}.weight": v for k, v in unit_scores.items()}
        alive = {f"{k}.weight": v for k, v in alive_units(plan.units, base).items()}
        kept = {k.removesuffix(".weight"): v for k, v in prune(scores, alive, groups).items()}
        new = expand(plan.units, kept, model, base)
    else:
        criterion = cfg.prune.criterion
        data = problem.data
        bs = cfg.train.batch_size
        examples = Examples(
            data.input_shape,
            lambda: ((x, y) for _, x, y in batch_iter(data.train, bs, seed, 0, cfg.prune.score_batches)),
        )

        def score(current: M.Mask) -> dict[str, torch.Tensor]:
            return S.score(
                criterion, model=model, mask=current, examples=examples, start=start_state, end=source, seed=seed
            )

        new = prune_in_rounds(score, base, groups, cfg.prune.rounds or S.get(criterion).rounds)
    if not M.is_subset(new, base):
        raise AssertionError("pruning must only remove weights")
    return new


def _random_baseline(plan: _Plan, problem: Problem, mask: M.Mask, seed: int) -> M.Mask:
    """A random mask at the ticket's densities: per pool of layers sharing a threshold (per layer for layerwise
    and ERK), or, for structured tickets, random neurons/filters, as many per layer as the ticket keeps."""
    if plan.units is None:
        pools = [m for g in plan.groups for m in ([(n,) for n in g.members] if g.erk else [g.members])]
        return random_mask(mask, seed, pools)
    model = problem.init_model(0)
    alive = alive_units(plan.units, mask)
    pools = [(u.layer,) for u in plan.units]  # as many per layer as the ticket keeps, global or not
    chosen = random_mask(alive, seed, pools)
    full = _full_mask(model, plan)
    return expand(plan.units, chosen, model, {n: m for n, m in full.items() if n in mask})


def _check_collapse(cfg: ExperimentConfig, problem: Problem, mask: M.Mask, where: str) -> None:
    """Layer collapse (a layer emptied, or outputs cut off from the input): warn, or refuse to go on."""
    problems = collapse(problem.init_model(0), mask, problem.data.input_shape)
    if not problems:
        return
    text = f"layer collapse at {where}: {'; '.join(problems)}\n{M.density_table(mask)}"
    if cfg.prune.on_collapse == "refuse":
        raise TicketlabError(
            f"{text}\n(nothing was saved for this level; lower the sparsity, use --strategy "
            "layerwise or erk, keep layers dense, or pass --on-collapse warn)"
        )
    print(f"ticketlab: warning: {text}", file=sys.stderr, flush=True)


def _train_job(model, data, cfg, mask, data_seed, start, bars, job: JobDir, save_at=None, on_save=None) -> TrainResult:
    total = Step.parse(cfg.train.steps).iterations(iterations_per_epoch(len(data.train), cfg.train.batch_size))
    desc = f"rep {job.replicate} level {job.level:2d} {job.branch:<12} {100 * M.density(mask):6.2f}%"
    short = f"r{job.replicate} L{job.level:<2} {job.branch:<12} {100 * M.density(mask):6.2f}%"
    bar = bars.job(short, total - start)

    def show(done: int, last: dict[str, Any]) -> None:
        bar.update(1)
        if done % 50 == 0 or done == total:
            bar.set_postfix_str(f"test acc {last['test_acc']:.3f}", refresh=False)

    result = train(
        model,
        data,
        cfg.train,
        mask=mask,
        data_seed=data_seed,
        start=start,
        save_at=save_at,
        on_save=on_save,
        progress=show if bar is not None else None,
    )
    if bar is not None:
        bar.set_postfix_str(f"test acc {result.final_test_acc:.3f}")
        bar.close()
    else:
        print(
            f"{desc}  test acc {result.final_test_acc:.4f}  (early-stop {result.best_test_acc:.4f} "
            f"@ {result.early_stop_step} it, {result.wall_time_s:.1f}s)",
            file=sys.stderr,
            flush=True,
        )
    return result


def _finish(job: JobDir, model: nn.Module, mask: M.Mask, result: TrainResult, label: str = "", options=None) -> None:
    """Write a job's outputs; ``result.json`` last, so its presence means the job is complete. ``label``: a
    branch's name with its options, in place of the directory's name."""
    save_tensors(job.file("final.safetensors"), _state(model))
    atomic_write_text(job.file("metrics.jsonl"), "".join(json.dumps(row) + "\n" for row in result.metrics))
    summary = {
        "replicate": job.replicate,
        "level": job.level,
        "branch": label or job.branch,
        **({"options": options} if options is not None else {}),
        "density": M.density(mask),
        "layer_densities": M.layer_densities(mask),
        **result.summary(),
    }
    write_json(job.file("result.json"), summary)


def collect_results(run_dir: Path, config: ExperimentConfig) -> list[dict[str, Any]]:
    """Rows of every completed job within the configured replicates and levels: the trunk (ticket and its
    baselines) first, then any branches run off it (``ticketlab branch``), in name order."""
    rows = []
    for r in range(config.imp.replicates):
        for level in range(level_count(config) + 1):
            trunk = ("ticket", *config.imp.baselines) if level else ("ticket",)
            level_dir = JobDir(run_dir, r, level, "ticket").path.parent
            others = sorted(p.name for p in level_dir.iterdir() if p.is_dir()) if level_dir.is_dir() else []
            for branch in [*trunk, *(b for b in others if b not in trunk)]:
                job = JobDir(run_dir, r, level, branch)
                if not job.done:
                    continue
                result = job.result()
                # a baseline the trunk no longer asks for is left out, unless a branch command ran it
                if branch in trunk or branch not in BRANCHES or "options" in result:
                    rows.append({k: v for k, v in result.items() if k in RESULT_COLUMNS})
    return rows


@dataclass
class Ticket:
    """A winning ticket: the mask and the rewound (masked) weights it trains from."""

    level: int
    density: float
    mask: M.Mask
    state: dict[str, torch.Tensor]

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the rewound weights into ``model`` and zero its pruned weights."""
        model.load_state_dict(self.state)
        return M.apply_mask(model, self.mask)


def load_ticket(run_dir: Path, level: int, replicate: int = 0, device: str | torch.device = "cpu") -> Ticket:
    job = JobDir(run_dir, replicate, level, "ticket")
    if not job.done:
        raise TicketlabError(f"level {level} of replicate {replicate} in {run_dir} has not finished")
    init = job.file("init.safetensors") if level else job.path.parent / "init.safetensors"
    mask = M.load_mask(job.path.parent / "mask.safetensors", device)
    return Ticket(level, M.density(mask), mask, load_tensors(init, device))


def user_problem(model: nn.Module, data: Dataset, seed: int) -> Problem:
    """A :class:`Problem` for any ``nn.Module``: its current weights are replicate 0's theta_0."""
    device = data.train.x.device
    base = copy.deepcopy(model).to(device)

    def init_model(replicate: int) -> nn.Module:
        m = copy.deepcopy(base)
        if replicate:
            from ticketlab.models import initialize

            initialize(m, "default", derive_seed(seed, replicate, "init"))
        return m

    def fresh_model(s: int) -> nn.Module:
        from ticketlab.models import initialize

        return initialize(copy.deepcopy(base), "default", s)

    h = hashlib.sha256()
    for k, v in base.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    identity = {"model": type(model).__name__, "weights": h.hexdigest()[:10]}
    return Problem(data, init_model, fresh_model, identity)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TicketlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TicketlabError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TicketlabError(f"device {name!r}: there are only {torch.cuda.device_count()} GPU(s)")
        # Same seed, same result -- and resuming a killed run -- need deterministic kernels on the GPU too.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device


def registry_problem(config: ExperimentConfig, data: Dataset) -> Problem:
    """A :class:`Problem` for a registered model, initialised by the configured scheme."""
    from ticketlab.models import create_model, initialize

    mc = config.model
    kwargs = mc.kwargs()
    device = data.train.x.device

    def build(seed: int) -> nn.Module:
        model = create_model(mc.model, data.input_shape, data.num_classes, **kwargs)
        return initialize(model, mc.init, seed).to(device)

    def init_model(replicate: int) -> nn.Module:
        return build(derive_seed(config.imp.seed, replicate, "init"))

    return Problem(data, init_model, build, {"model": mc.model, "dataset": data.name})


def imp(
    config: ExperimentConfig, *, out: str | Path = "runs", device: str = "auto", progress: bool = False
) -> tuple[Path, list[dict[str, Any]]]:
    """Run the configured experiment under ``out/<model>-<dataset>-<hash>``; everything is validated first."""
    from ticketlab.data import load_configured

    dev = resolve_device(device)
    d = config.data
    data = load_configured(d, dev)
    problem = registry_problem(config, data)
    run_dir = Path(out) / f"{config.model.model}-{config.data.dataset}-{config.run_hash()}"
    return run_dir, run_imp(config, problem, run_dir, progress=progress)
