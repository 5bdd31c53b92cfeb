"""Training a (masked) network: optimizers, LR schedules, evaluation, and the mask kept exact.

After every optimizer step the pruned weights are exactly zero. Gradients of pruned weights are
zeroed before the step, so Adam's moments and SGD's momentum for them stay zero too (a pruned
weight with zero gradient, zero weight and zero state gets a zero update, weight decay included),
and the weights are masked again after the step in case an optimizer moves them anyway.

Workflows watch training through observers (:class:`Observer`): called after every step, at every evaluation
and at the end. Saving the rewind point and the progress bar are observers; so is anything a later workflow
needs to see during training (checkpoints, masks per epoch), with no new parameter on :func:`train`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from ticketlab.config import TrainConfig
from ticketlab.data import Dataset, batches, iterations_per_epoch
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.pruning.compact import compact
from ticketlab.pruning.units import add_slimming_grad
from ticketlab.sparse import swap_in, swap_out
from ticketlab.training.objectives import CLASSIFICATION, LanguageModel, Objective, evaluate

__all__ = [
    "Observer",
    "SaveAt",
    "Schedule",
    "TrainResult",
    "MaskedParams",
    "evaluate",
    "make_optimizer",
    "precision_context",
    "train",
]


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a pure function of the iteration, so training can resume at any step."""

    base_lr: float
    total: int
    kind: str = "constant"
    warmup: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    @classmethod
    def from_config(cls, cfg: TrainConfig, per_epoch: int) -> Schedule:
        return cls(
            base_lr=cfg.lr,
            total=cfg.steps.iterations(per_epoch),
            kind=cfg.schedule,
            warmup=cfg.warmup.iterations(per_epoch),
            milestones=tuple(sorted(m.iterations(per_epoch) for m in cfg.milestones)),
            gamma=cfg.gamma,
        )

    def lr(self, step: int) -> float:
        """LR used for the update that takes the model from ``step`` to ``step + 1``."""
        factor = 1.0
        if self.warmup and step < self.warmup:
            factor = (step + 1) / self.warmup
        if self.kind == "step":
            factor *= self.gamma ** sum(step >= m for m in self.milestones)
        elif self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            factor *= 0.5 * (1 + math.cos(math.pi * min(max(step - self.warmup, 0), span) / span))
        return self.base_lr * factor


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW (decoupled weight decay, Loshchilov & Hutter 2019) or SGD; the fused kernels where PyTorch has
    them (a third of the step time on CPU for LeNet)."""
    fused = all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params
    )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


class MaskedParams:
    """The prunable parameters of a model paired with float masks, for fast in-place masking."""

    def __init__(self, model: nn.Module, mask: Mask):
        named = dict(model.named_parameters())
        self.names = list(mask)
        self.params = [named[n] for n in self.names]
        self.masks = [mask[n].to(named[n].device, named[n].dtype) for n in self.names]

    @torch.no_grad()
    def mask_grads(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, [m for p, m in zip(self.params, self.masks) if p.grad is not None])

    @torch.no_grad()
    def mask_weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def check(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Runtime invariant: pruned weights and their optimizer state are exactly zero."""
        for name, p, m in zip(self.names, self.params, self.masks):
            tensors = [p] + [
                v
                for v in (optimizer.state.get(p, {}).values() if optimizer else [])
                if torch.is_tensor(v) and v.shape == p.shape
            ]
            for t in tensors:
                if bool((t[m == 0] != 0).any()):
                    raise AssertionError(f"pruned entries of {name} are not zero after training")


TRAIN_ACC_SAMPLE = 10_000


@dataclass
class TrainResult:
    metrics: list[dict[str, Any]]  # one row per evaluation
    final_test_acc: float
    best_test_acc: float  # test accuracy at the early-stop step
    early_stop_step: int  # step of minimum validation loss (test loss when there is no validation set)
    train_acc: float  # on the first TRAIN_ACC_SAMPLE training examples
    wall_time_s: float

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "metrics"}

    def perplexities(self) -> dict[str, float]:
        """``final_test_ppl`` and ``best_test_ppl`` (at the early-stop step) of a language model's run; empty for
        any other objective (its metric rows have no ``test_ppl``)."""
        if not self.metrics or "test_ppl" not in self.metrics[-1]:
            return {}
        best = next(r for r in self.metrics if r["step"] == self.early_stop_step)
        return {"final_test_ppl": self.metrics[-1]["test_ppl"], "best_test_ppl": best["test_ppl"]}


class Observer:
    """Watches a training run; override what you need. ``step`` counts iterations taken (the model has taken
    ``step`` optimizer steps): training runs from ``start`` to ``end``."""

    def on_begin(self, model: nn.Module, start: int, end: int) -> None:
        pass

    def wants_model(self, step: int) -> bool:
        """Whether :meth:`on_step` at ``step`` reads the network (batched training writes a job's weights into its
        network only then)."""
        return True

    def on_step(self, step: int, model: nn.Module) -> None:
        pass

    def on_eval(self, step: int, row: dict[str, Any]) -> None:
        pass

    def on_end(self, model: nn.Module, result: TrainResult) -> None:
        pass

    def stop(self, step: int) -> bool:
        """Whether training ends after ``step`` (asked after :meth:`on_step`; an early-bird ticket has emerged)."""
        return False


class SaveAt(Observer):
    """Calls ``save(model)`` once, when the model has taken ``step`` steps (the rewind point theta_k)."""

    def __init__(self, step: int, save: Callable[[nn.Module], None]):
        self.step, self.save = step, save

    def wants_model(self, step: int) -> bool:
        return step == self.step

    def on_begin(self, model: nn.Module, start: int, end: int) -> None:
        if start == self.step:
            self.save(model)

    def on_step(self, step: int, model: nn.Module) -> None:
        if step == self.step:
            self.save(model)


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    mask: Mask,
    data_seed: int,
    start: int = 0,
    until: int | None = None,
    observers: tuple[Observer, ...] | list[Observer] = (),
    objective: Objective | None = None,
    kernels: str = "auto",
) -> TrainResult:
    """Train ``model`` in place from iteration ``start`` to the end of the schedule (or to ``until``, an
    iteration before it: the schedule stays the whole run's), keeping ``mask`` exact.

    The data order, augmentation and dropout draws at each iteration depend only on ``data_seed`` and the
    iteration, so training resumed at any ``start`` reproduces an uninterrupted run bit for bit.
    ``objective``: the loss and accuracy (default: the data's, else classification). ``kernels``: "auto" trains
    the Linear layers whose density is below the break-even measured on this machine with sparse (CSR) kernels
    (:mod:`ticketlab.sparse`; on a CPU, when no observer reads the network mid-training): the same training to
    float tolerance, faster; "off" keeps every layer dense and masked. Raises TicketlabError when the loss
    diverges.
    """
    t0 = time.perf_counter()
    objective = objective or data.objective or CLASSIFICATION
    per_epoch = iterations_per_epoch(len(data.train), cfg.batch_size)
    schedule = Schedule.from_config(cfg, per_epoch)
    end = schedule.total if until is None else min(until, schedule.total)
    eval_every = cfg.eval_every.iterations(per_epoch)
    MaskedParams(model, mask).mask_weights()
    stoppers = [o for o in observers if hasattr(o, "stop")]  # Observer.stop is optional for duck-typed observers
    net, compaction, swapped = model, None, {}
    if kernels == "auto" and data.train.x.device.type == "cpu" and not _watched(observers, start, end):
        found = compacted(model, mask, data.input_shape, cfg)  # dead units removed, if there are any
        if found is not None:
            net, mask, compaction = found
        swapped = swap_in(net, mask)  # Linear layers sparse enough to train faster as CSR (ticketlab.sparse)
    masked = MaskedParams(net, {n: m for n, m in mask.items() if n.removesuffix(".weight") not in swapped})
    try:
        # frozen tensors (a supermask's weights) are not the optimizer's
        optimizer = make_optimizer([p for p in net.parameters() if p.requires_grad], cfg)
        metrics: list[dict[str, Any]] = []
        running, seen = torch.zeros((), device=data.train.x.device), 0
        precision = precision_context(cfg, data.train.x.device)
        memory_format = torch.channels_last if cfg.channels_last and len(data.input_shape) == 3 else None
        if memory_format is not None:
            net.to(memory_format=memory_format)

        def record(step: int) -> dict[str, Any]:
            nonlocal running, seen
            row: dict[str, Any] = {"step": step, "lr": schedule.lr(max(step - 1, 0))}
            if seen:
                row["train_loss"] = running.item() / seen
                running, seen = torch.zeros_like(running), 0
                if not math.isfinite(row["train_loss"]):
                    # Masking multiplies by zero, which cannot clear NaN: stop here with the cause, not later.
                    raise TicketlabError(
                        f"training diverged (loss {row['train_loss']}) before step {step}; lower --lr or add --warmup"
                    )
            with precision():
                if data.val is not None:
                    row["val_loss"], row["val_acc"] = evaluate(net, data.val, objective)
                row["test_loss"], row["test_acc"] = evaluate(net, data.test, objective)
            if isinstance(objective, LanguageModel):  # perplexity: exp of the per-token loss (LM rows only)
                row.update(
                    {f"{k}_ppl": math.exp(min(row[f"{k}_loss"], 700)) for k in ("val", "test") if f"{k}_loss" in row}
                )
            metrics.append(row)
            for o in observers:
                o.on_eval(step, row)
            return row

        for o in observers:
            o.on_begin(model, start, end)
        record(start)
        net.train()
        # Randomness inside the net (dropout) is seeded per step, so a run resumed at any step reproduces it;
        # forked, so the caller's random state is left as it was.
        # (Seeding that device's generator directly: torch.manual_seed seeds every backend, ~120 us a step on CPU.)
        device = data.train.x.device
        cuda = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        generator = torch.cuda.default_generators[cuda[0]] if cuda else torch.default_generator
        with torch.random.fork_rng(devices=cuda):
            for it, x, y in batches(data.train, cfg.batch_size, data_seed, start, end, augment=data.augment):
                generator.manual_seed(_step_seed(data_seed, it))  # dropout draws the same at step `it` on resume
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr(it)
                if memory_format is not None:
                    x = x.contiguous(memory_format=memory_format)
                with precision():
                    loss = objective.loss(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.slimming:
                    add_slimming_grad(net, cfg.slimming)
                masked.mask_grads()
                optimizer.step()
                masked.mask_weights()
                running += loss.detach()
                seen += 1
                done = it + 1
                if done % eval_every == 0 or done == end:
                    record(done)
                    net.train()
                for o in observers:
                    o.on_step(done, net)
                if any([o.stop(done) for o in stoppers]):  # an observer ends training here, evaluated
                    if metrics[-1]["step"] != done:
                        record(done)
                    break
        masked.check(optimizer)
        key = "val_loss" if data.val is not None else "test_loss"
        best = min(metrics, key=lambda r: r[key])
        with precision():
            # a fixed sample, so that a big training set does not cost a long pass per job on a CPU
            _, train_acc = evaluate(net, data.train.head(TRAIN_ACC_SAMPLE), objective)
        if memory_format is not None:
            net.to(memory_format=torch.contiguous_format)
    finally:
        swap_out(net, swapped)  # the model the caller gave, dense and full-size again, whatever happened
        if compaction is not None:
            model.load_state_dict(compaction.full_state(net.state_dict()))
    result = TrainResult(
        metrics=metrics,
        final_test_acc=metrics[-1]["test_acc"],
        best_test_acc=best["test_acc"],
        early_stop_step=best["step"],
        train_acc=train_acc,
        wall_time_s=time.perf_counter() - t0,
    )
    for o in observers:
        o.on_end(model, result)
    return result


def compacted(model: nn.Module, mask: Mask, input_shape: tuple[int, ...], cfg: TrainConfig):
    """``(small network, its mask, the map back)`` without the ticket's dead units, exactly for training
    (:func:`ticketlab.pruning.compact.compact`), or None: when no mask has an empty row or column (then no unit
    can be dead; a cheap test that spares the trace), nothing is removed, the network cannot be traced, draws
    dropout (other shapes, other draws), or trains with network slimming; and when the full network would move
    what the small one drops -- weight decay shrinks a dead unit's weights (which later levels rank), BatchNorm
    updates a dead channel's running statistics -- so that training stays the same, to float rounding."""
    empty = any(
        m.dim() >= 2 and (not bool(m.flatten(1).any(1).all()) or not bool(m.transpose(0, 1).flatten(1).any(1).all()))
        for m in mask.values()
    )
    if not empty or cfg.slimming or cfg.weight_decay:
        return None
    if any(
        (isinstance(m, _DropoutNd) and m.p > 0) or (isinstance(m, _NormBase) and m.track_running_stats)
        for m in model.modules()
    ):
        return None
    try:
        small, small_mask, compaction = compact(model, mask, input_shape, training=True)
    except Exception:  # a network find_units cannot trace trains whole
        return None
    if compaction.params_after == compaction.params_before:
        return None
    return small.to(next(model.parameters()).device).train(model.training), small_mask, compaction


def _watched(observers: tuple[Observer, ...] | list[Observer], start: int, end: int) -> bool:
    """Whether an observer reads the network at some step before the end (then layers are not swapped)."""
    return any(o.wants_model(step) for o in observers for step in range(start, end))


def _step_seed(data_seed: int, it: int) -> int:
    return (data_seed * 6_364_136_223_846_793_005 + it) % (2**63)


def precision_context(cfg: TrainConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory: bf16 autocast (matmuls and convs in bfloat16, the weights and optimizer in fp32)."""
    if cfg.precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
