"""Batched jobs: independent training jobs of one network trained together, in one pass per step.

The replicates, baselines and branch levels of a run are independent jobs on the same architecture, data and
training config; on a small network each step of each job is mostly per-operation overhead. Here J such jobs
train as one: their parameters, buffers, masks and optimizer state are stacked along a new leading dimension
(``torch.func.stack_module_state``), the network runs once per step through ``torch.func.vmap`` over
``functional_call``, the loss is the sum of the jobs' losses (so each job's gradient is its own), and one
optimizer steps the stacked tensors. Adam and SGD act elementwise, so each job's update is the one it would get
alone. Each job keeps its own data order and augmentation draws (its ``data_seed``); jobs sharing a data seed
share the gathered batch. A network of Linear layers and parameter-free operations runs faster as one batched
matmul per layer on the jobs' inputs laid end to end, used once it gives what ``vmap`` gives on a first batch.

Results equal one-by-one training to float tolerance (batched matmuls round differently), not bit for bit: the
same jobs batched the same way give the same bytes, which is what resuming relies on (see
:func:`ticketlab.jobs.run_jobs`, which always re-forms the same batches).

Not batched (trained one by one instead, with the reason said once): networks that draw random numbers inside
``forward`` (dropout: per-job draws equal to one-by-one training would need one generator per job), network
slimming and channels-last training, and networks ``vmap`` cannot run. Source: the ``torch.func`` model-ensembling
recipe (PyTorch tutorials, "Model ensembling").
"""

from __future__ import annotations

import copy
import math
import re
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ticketlab.config import TrainConfig
from ticketlab.data import Dataset, Split, batches, iterations_per_epoch
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.training import TRAIN_ACC_SAMPLE, Observer, Schedule, TrainResult, make_optimizer, precision_context
from ticketlab.training.objectives import CLASSIFICATION, Objective

# "auto" batches a network whose training step is small enough to be dominated by per-operation overhead: at most
# this many multiply-accumulates per step (weights x batch size) on a CPU. Measured with benchmarks/batched_speed.py
# on the 2-core CPU VM: the MNIST-1D MLP (15K weights, batch 100) trains 2.7x faster with 9 jobs batched, 3.7x with
# 27. Up to CPU_WORK_MEDIUM a network gains only from many jobs: LeNet-300-100 (266K weights, batch 128; 34M)
# trains 0.74-0.80x as fast with 3 jobs batched, 1.45-1.51x with 9; so auto batches such a network only when at
# least MEDIUM_MIN_JOBS jobs share a pass. Beyond it (ResNets, VGG) nothing is batched on a CPU. On a GPU small
# networks are launch-bound, so auto batches up to memory there -- not yet measured (no GPU has been lent to the
# project; benchmarks/gpu_check.sh measures it).
CPU_WORK_LIMIT = 10_000_000
CPU_WORK_MEDIUM = 50_000_000
MEDIUM_MIN_JOBS = 6
AUTO_MAX_JOBS = 32  # a pass never stacks more jobs than this under "auto"
MEMORY_SHARE = 0.25  # of the device's total memory (GPU) or of 16 GiB (CPU), for the stacked state


def parse_setting(value: str | int) -> str | int:
    """``--batch-jobs``: "auto", "off", or a positive number of jobs per pass; TicketlabError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise TicketlabError(
        f"--batch-jobs (batch_jobs=) {str(value)[:40]!r}: give auto, off, or a number of jobs per pass (>= 1)"
    )


def signature(model: nn.Module) -> tuple:
    """What jobs must share to be stacked: the module tree, and every parameter's and buffer's name, shape, dtype."""
    return (
        tuple((name, type(m).__qualname__) for name, m in model.named_modules()),
        tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()),
        tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers()),
    )


def jobs_per_pass(
    setting: str | int, model: nn.Module, cfg: TrainConfig, device: torch.device, jobs: int = AUTO_MAX_JOBS
) -> int:
    """How many of ``jobs`` jobs of ``model`` one pass stacks: 1 for "off"; the given number; or, for "auto", as
    many as fit the memory share when a step is small enough to gain (on a CPU: ``CPU_WORK_LIMIT``, or up to
    ``CPU_WORK_MEDIUM`` with at least ``MEDIUM_MIN_JOBS`` jobs), else 1."""
    if setting == "off":
        return 1
    weights = sum(p.numel() for p in model.parameters())
    if setting == "auto":
        limit = CPU_WORK_LIMIT if jobs < MEDIUM_MIN_JOBS else CPU_WORK_MEDIUM
        if device.type == "cpu" and weights * cfg.batch_size > limit:
            return 1
        per_job = 6 * 4 * weights  # weights, gradient, two optimizer moments, mask, a copy: float32 bytes
        # total, not free, memory: the passes (and so the bytes a resumed run ends with) must not depend on what
        # else holds the GPU at the moment
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 16 * 2**30
        budget = MEMORY_SHARE * total
        return max(1, min(AUTO_MAX_JOBS, int(budget // max(per_job, 1))))
    return int(setting)


def unbatchable(model: nn.Module, cfg: TrainConfig, data: Dataset, objective: Objective) -> str | None:
    """Why ``model`` cannot train batched under ``cfg`` (one phrase), or None when it can: tried on two examples,
    forward and backward, with random operations refused."""
    if cfg.slimming:
        return "network slimming adds its penalty per module"
    if cfg.channels_last:
        return "channels-last training"
    trial = copy.deepcopy(model)
    params, buffers = stack_module_state([trial, trial])
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    x = data.train.normalize(data.train.x[:2])
    xs, ys = torch.stack([x, x]), torch.stack([data.train.y[:2]] * 2)
    trial.train()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = _forward(trial, randomness="error")(params, buffers, xs)
            vmap(objective.loss)(out, ys).sum().backward()
        for w in caught:  # vmap without a batching rule loops over the jobs: slower than training them one by one
            if "not yet implemented the batching rule" in str(w.message):
                rule = re.search(r"aten::\S+", str(w.message))
                return f"torch.func.vmap has no batching rule for {rule.group(0) if rule else 'an operation'}"
    except RuntimeError as e:
        if "random" in str(e):
            return "the network draws random numbers in forward (dropout)"
        return f"torch.func.vmap cannot run it ({str(e).splitlines()[0][:80]})"
    except Exception as e:  # a network vmap cannot trace is trained one by one, not refused
        return f"torch.func.vmap cannot run it ({type(e).__name__})"
    return None


def _forward(base: nn.Module, randomness: str = "error"):
    """``f(params, buffers, x)`` over stacked parameters and buffers (J, ...) and inputs (J, B, ...)."""
    return vmap(lambda p, b, x: functional_call(base, (p, b), (x,), tie_weights=True), randomness=randomness)


class _GroupedLinear(nn.Module):
    """A Linear layer of J stacked jobs on inputs (J*B, ..., in), job-major: one batched matmul (``baddbmm``)."""

    def __init__(self, params: dict[str, torch.Tensor], name: str, jobs: int):
        super().__init__()
        self.params, self.weight, self.bias, self.jobs = params, f"{name}.weight", f"{name}.bias", jobs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.params[self.weight], self.params.get(self.bias)
        flat = x.reshape(self.jobs, -1, x.shape[-1])
        wt = w.transpose(1, 2)
        out = torch.bmm(flat, wt) if b is None else torch.baddbmm(b.unsqueeze(1), flat, wt)
        return out.reshape(*x.shape[:-1], w.shape[1])


def _grouped_forward(base: nn.Module, params: dict[str, torch.Tensor], jobs: int):
    """``f(x)`` for stacked inputs (J, B, ...) -> (J, B, ...) outputs, running ``base`` once on the jobs' inputs
    laid end to end with each ``nn.Linear`` swapped for a batched matmul -- for networks made only of Linear
    layers and parameter-free operations on examples (checked against ``vmap`` before use, see
    :func:`grouped_matches`); None when ``base`` has other parameters or buffers."""
    linears = {n for n, m in base.named_modules() if type(m) is nn.Linear}
    if any(n.rpartition(".")[0] not in linears for n, _ in base.named_parameters(remove_duplicate=False)):
        return None
    if any(True for _ in base.named_buffers()) or len(set(map(id, base.parameters()))) != len(
        list(base.named_parameters(remove_duplicate=False))
    ):
        return None  # buffers (BatchNorm) would mix the jobs' statistics; tied weights need the functional path
    if not linears or "" in linears:
        return None
    grouped = copy.deepcopy(base)
    for name in linears:
        parent, _, leaf = name.rpartition(".")
        setattr(grouped.get_submodule(parent) if parent else grouped, leaf, _GroupedLinear(params, name, jobs))

    def forward(x: torch.Tensor) -> Any:
        grouped.train(base.training)
        out = grouped(x.reshape(-1, *x.shape[2:]))
        return out.reshape(jobs, -1, *out.shape[1:]) if torch.is_tensor(out) else None

    return forward


def _stacked_forward(stacked: Stacked, example: torch.Tensor):
    """The fastest exact way to run the stacked jobs: ``f(x)``, inputs (J, B, ...) -> outputs with a leading J.
    The grouped-matmul path is taken when the network allows it and it gives what ``vmap`` gives on ``example``
    (B, ...) in both training and evaluation mode; else ``vmap`` over ``functional_call``."""
    J = stacked.masks[0].shape[0] if stacked.masks else next(iter(stacked.params.values())).shape[0]
    general = _forward(stacked.base)

    def vmapped(x: torch.Tensor) -> Any:
        return general(stacked.params, stacked.buffers, x)

    grouped = _grouped_forward(stacked.base, stacked.params, J)
    if grouped is None:
        return vmapped
    x = example.expand(J, *example.shape)
    was = stacked.base.training
    try:
        with torch.no_grad():
            for mode in (True, False):
                stacked.base.train(mode)
                a, b = grouped(x), vmapped(x)
                if not (torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape):
                    return vmapped
                if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
                    return vmapped
    except Exception:  # any network the grouped path cannot run takes the general one
        return vmapped
    finally:
        stacked.base.train(was)
    return grouped


def _losses(objective: Objective, out: Any, y: torch.Tensor) -> torch.Tensor:
    """Each job's mean loss (J,) for stacked outputs (J, B, ...) and targets (J, B). Classification's is one
    cross-entropy over all jobs' examples, its log-softmax taken along the first axis of the transposed scores
    (J*B, C) -> (C, J*B): the same values, about 4x faster on a CPU for few classes than along the last axis
    (measured: 130 vs 550 us forward and backward for 9 x 100 examples of 10 classes). Any other objective goes
    through ``vmap``."""
    if type(objective) is Objective and objective.output is None and torch.is_tensor(out) and out.dim() == 3:
        log_p = F.log_softmax(out.reshape(-1, out.shape[-1]).float().t(), 0)
        return -log_p.gather(0, y.reshape(1, -1))[0].view(out.shape[0], -1).mean(1)
    return vmap(objective.loss)(out, y)


class Stacked:
    """The parameters, buffers and masks of J same-shaped networks, stacked (J, ...), trainable as leaves."""

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[Mask]):
        params, buffers = stack_module_state(list(models))
        self.params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
        self.buffers = {n: b.clone() for n, b in buffers.items()}
        self.base = copy.deepcopy(models[0])
        names = list(masks[0])
        if any(list(m) != names for m in masks):
            raise AssertionError("stacked jobs must mask the same tensors")
        canonical = {id(p): n for n, p in models[0].named_parameters()}  # tied weights: the name stacked
        owners = dict(models[0].named_parameters(remove_duplicate=False))
        self.masked = [canonical[id(owners[n])] for n in names]
        self.masks = [
            torch.stack([m[n] for m in masks]).to(self.params[s].device, self.params[s].dtype)
            for n, s in zip(names, self.masked)
        ]

    @torch.no_grad()
    def mask_grads(self) -> None:
        pairs = [(self.params[n].grad, m) for n, m in zip(self.masked, self.masks) if self.params[n].grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def mask_weights(self) -> None:
        if self.masked:
            torch._foreach_mul_([self.params[n] for n in self.masked], self.masks)

    @torch.no_grad()
    def copy_to(self, j: int, model: nn.Module) -> None:
        """Write job ``j``'s parameters and buffers into ``model`` (its own network)."""
        for n, p in model.named_parameters():
            p.copy_(self.params[n][j])
        for n, b in model.named_buffers():
            if n in self.buffers:
                b.copy_(self.buffers[n][j])

    @torch.no_grad()
    def check(self, optimizer: torch.optim.Optimizer) -> None:
        """Runtime invariant: pruned weights and their optimizer state are exactly zero, in every job."""
        for n, m in zip(self.masked, self.masks):
            p = self.params[n]
            state = [v for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v) and v.shape == p.shape]
            for t in (p, *state):
                if bool((t[m == 0] != 0).any()):
                    raise AssertionError(f"pruned entries of {n} are not zero after training")


def train_batched(
    models: Sequence[nn.Module],
    data: Dataset,
    cfg: TrainConfig,
    *,
    masks: Sequence[Mask],
    data_seeds: Sequence[int],
    start: int = 0,
    observers: Sequence[Sequence[Observer]] = (),
    objective: Objective | None = None,
) -> list[TrainResult]:
    """Train J same-shaped ``models`` (each with its mask, data seed and observers) together, in place, from
    iteration ``start`` to the end of ``cfg``'s schedule: :func:`ticketlab.training.train` for each, in one pass.

    Each result's ``wall_time_s`` is the pass's wall time divided by J (the job's share). Raises TicketlabError
    when a job's loss diverges (naming it by position), and ValueError for jobs that cannot be stacked (check
    :func:`unbatchable` first).
    """
    t0 = time.perf_counter()
    J = len(models)
    observers = [list(o) for o in observers] or [[] for _ in models]
    objective = objective or data.objective or CLASSIFICATION
    per_epoch = iterations_per_epoch(len(data.train), cfg.batch_size)
    schedule = Schedule.from_config(cfg, per_epoch)
    end = schedule.total
    eval_every = cfg.eval_every.iterations(per_epoch)
    if len({signature(m) for m in models}) != 1:
        raise ValueError("batched jobs must share one architecture")
    seeds = sorted(set(data_seeds))  # jobs sharing a data seed share each gathered batch
    row_of = [seeds.index(s) for s in data_seeds]
    shared = len(seeds) == 1
    stacked = Stacked(models, masks)
    stacked.mask_weights()
    optimizer = make_optimizer(list(stacked.params.values()), cfg)
    forward = _stacked_forward(stacked, data.train.normalize(data.train.x[:4]))
    precision = precision_context(cfg, data.train.x.device)
    metrics: list[list[dict[str, Any]]] = [[] for _ in models]
    running, seen = torch.zeros(J, device=data.train.x.device), 0

    def evaluate_all(split: Split) -> tuple[list[float], list[float]]:
        stacked.base.eval()
        loss = torch.zeros(J, device=split.x.device)
        correct = torch.zeros(J, device=split.x.device, dtype=torch.long)
        count = 0
        chunk = max(256, 8192 // J)
        with torch.no_grad(), precision():
            for i in range(0, len(split), chunk):
                x = split.inputs(slice(i, i + chunk))
                out = forward(x.expand(J, *x.shape))
                y = split.y[i : i + chunk]
                for j in range(J):
                    batch_loss, batch_correct, n = objective.sums(_job_output(out, j), y)
                    loss[j] += batch_loss
                    correct[j] += batch_correct
                count += n
        stacked.base.train()
        count = max(count, 1)
        return (loss.double() / count).tolist(), (correct.double() / count).tolist()

    def record(step: int) -> None:
        nonlocal running, seen
        lr = schedule.lr(max(step - 1, 0))
        rows: list[dict[str, Any]] = [{"step": step, "lr": lr} for _ in models]
        if seen:
            train_loss = (running.double() / seen).tolist()
            running, seen = torch.zeros_like(running), 0
            for j, (row, value) in enumerate(zip(rows, train_loss)):
                row["train_loss"] = value
                if not math.isfinite(value):
                    raise TicketlabError(
                        f"training diverged (loss {value}) before step {step} in batched job {j + 1} of {J}; lower "
                        "--lr or add --warmup"
                    )
        if data.val is not None:
            for row, loss, acc in zip(rows, *evaluate_all(data.val)):
                row["val_loss"], row["val_acc"] = loss, acc
        for row, loss, acc in zip(rows, *evaluate_all(data.test)):
            row["test_loss"], row["test_acc"] = loss, acc
        for j, row in enumerate(rows):
            metrics[j].append(row)
            for o in observers[j]:
                o.on_eval(step, row)

    def sync(step: int) -> None:  # observers that look at a job's network get its current weights
        for j, model in enumerate(models):
            if any(o.wants_model(step) for o in observers[j]):
                stacked.copy_to(j, model)

    sync(start)
    for j, model in enumerate(models):
        for o in observers[j]:
            o.on_begin(model, start, end)
    record(start)
    stacked.base.train()
    streams = [batches(data.train, cfg.batch_size, s, start, end, augment=data.augment) for s in seeds]
    for it in range(start, end):
        drawn = [next(s) for s in streams]
        if shared:
            x, y = drawn[0][1].expand(J, *drawn[0][1].shape), drawn[0][2].expand(J, *drawn[0][2].shape)
        else:
            x, y = torch.stack([drawn[k][1] for k in row_of]), torch.stack([drawn[k][2] for k in row_of])
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(it)
        with precision():
            losses = _losses(objective, forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        stacked.mask_grads()
        optimizer.step()
        stacked.mask_weights()
        running += losses.detach()
        seen += 1
        done = it + 1
        if done % eval_every == 0 or done == end:
            record(done)
        sync(done)
        for j, model in enumerate(models):
            for o in observers[j]:
                o.on_step(done, model)
    stacked.check(optimizer)
    train_split = data.train.head(TRAIN_ACC_SAMPLE)
    _, train_accs = evaluate_all(train_split)
    for j, model in enumerate(models):
        stacked.copy_to(j, model)
    share = (time.perf_counter() - t0) / J
    key = "val_loss" if data.val is not None else "test_loss"
    results = []
    for j, model in enumerate(models):
        best = min(metrics[j], key=lambda r: r[key])
        result = TrainResult(
            metrics=metrics[j],
            final_test_acc=metrics[j][-1]["test_acc"],
            best_test_acc=best["test_acc"],
            early_stop_step=best["step"],
            train_acc=train_accs[j],
            wall_time_s=share,
        )
        for o in observers[j]:
            o.on_end(model, result)
        results.append(result)
    return results


def _job_output(out: Any, j: int) -> Any:
    """Job ``j``'s part of a batched output (a tensor, or a tuple / list / dict of them), as its network returns it."""
    if torch.is_tensor(out):
        return out[j]
    if isinstance(out, (tuple, list)):
        return type(out)(_job_output(o, j) for o in out)
    if isinstance(out, dict):
        return {k: _job_output(v, j) for k, v in out.items()}
    return out
