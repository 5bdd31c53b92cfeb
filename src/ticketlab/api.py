"""The Python entry point for a user's own network: ``find_ticket(model, train, test, ...)``."""

from __future__ import annotations

import inspect
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import config as C
from ticketlab.batched import parse_setting
from ticketlab.data import Dataset, split_validation
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import user_problem
from ticketlab.prunable import BATCH_NORMS, adopt, check_supported
from ticketlab.rundir import RunDir, Ticket, level_count
from ticketlab.supermask import SupermaskResult, learn_supermask
from ticketlab.training.objectives import CLASSIFICATION, Objective
from ticketlab.user_data import check_labels, check_like, fingerprint, integer_hint, tensors_from


@dataclass
class TicketSearch:
    """The outcome of :func:`find_ticket`: the run, its results rows, and the sparsest ticket."""

    run: RunDir
    rows: list[dict[str, Any]]
    ticket: Ticket

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def at(self, level: int, replicate: int = 0) -> Ticket:
        """The ticket found at another level (TicketlabError for a level or replicate the run does not have)."""
        cfg = self.run.config()
        levels, replicates = level_count(cfg), cfg.imp.replicates
        if not 0 <= level <= levels:
            raise TicketlabError(f"no such level {level}: this run has levels 0..{levels}")
        if not 0 <= replicate < replicates:
            raise TicketlabError(f"no such replicate {replicate}: this run has replicates 0..{replicates - 1}")
        return self.run.ticket(level, replicate, self.ticket.mask[next(iter(self.ticket.mask))].device)


# The caller brings the model and the data, so these options would have nothing to act on.
_NOT_FOR_USER_MODELS = ("dataset", "data_dir", "model", "widths", "init")


def _flat_overrides(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    where = {f.name: s for s in C.SECTIONS for f in C.fields_of(s) if f.name not in _NOT_FOR_USER_MODELS}
    where.update(dict.fromkeys(C.LEGACY_MODE_KEYS, "imp"))  # one_shot=True / at_init=True, as before imp.mode
    nested: dict[str, dict[str, Any]] = {}
    for name, value in overrides.items():
        if name in _NOT_FOR_USER_MODELS:
            raise TicketlabError(
                f"find_ticket takes your model and data as arguments; the option {name!r} does not apply"
            )
        if name not in where:
            raise TicketlabError(f"find_ticket got an unknown option {name!r}; options: {', '.join(where)}")
        nested.setdefault(where[name], {})[name] = value
    return nested


def find_ticket(
    model: nn.Module | Callable[[int], nn.Module],
    train,
    test,
    /,
    *,
    val=None,
    config: C.ExperimentConfig | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
    **options: Any,
) -> TicketSearch:
    """Run IMP on any ``nn.Module`` and return the ticket (mask + rewound weights) at the last level.

    ``model``: an ``nn.Module``, whose current weights are theta_0 of replicate 0 (later replicates and the re-init
    baseline re-draw it with each module's own ``reset_parameters``, PyTorch's default init), or a factory
    ``seed -> nn.Module`` that replicate r calls with ``derive_seed(seed, r, "init")`` and the re-init baseline with
    its own seed, so they get your init. Lazy modules are materialised by one forward pass on training examples.
    ``train`` / ``test`` / ``val``: ``(x, y)`` tensors or NumPy arrays (x (N, ...), y (N,) class ids in [0, C), C
    the model's output width), a dict of them, or iterables of tuple, list or dict batches such as a DataLoader
    (read once into memory); the rules (dtypes, dict keys) are :mod:`ticketlab.user_data`'s. ``output_fn`` takes
    the class scores (N, C) out of the model's output (default: the output if a tensor, the first element of a
    tuple, the ``"logits"`` entry of a dict). ``options`` are the config fields by name, as on the command line:
    ``levels=5, fraction=0.2, steps="2ep", lr=1e-3, rewind="100it", baselines=()``.

    Results go to ``out`` (a run directory, resumable), or to a temporary directory that is removed when the
    returned :class:`TicketSearch` (and its ``run``) is garbage-collected, or when the interpreter exits.
    ``progress``: a live bar per job on stderr; without it nothing is printed but warnings. ``batch_jobs``: train
    a level's independent jobs (replicates, baselines) together where faster ("auto"), never ("off"), or at most
    K at a time; results equal one-by-one training to float tolerance (:mod:`ticketlab.batched`).
    ``sparse_kernels``: "auto" trains Linear layers sparser than their measured break-even with CSR kernels
    (:mod:`ticketlab.sparse`), "off" keeps them dense and masked; equal to float tolerance too. ``tensorboard``: a
    directory for each job's TensorBoard scalars (:mod:`ticketlab.tensorboard`). Every mistake (an
    option naming a model or dataset, bad data or labels, a model that cannot take the data) is a TicketlabError,
    before anything is trained.
    """
    batch_jobs = parse_setting(batch_jobs)
    base = config.to_dict() if config is not None else C.ExperimentConfig().to_dict()
    cfg = C.from_dict(C.merge(base, _flat_overrides(options)))
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise TicketlabError(f"out={str(out)!r} is a file; give a directory (a new one, or a run directory to resume)")
    if not isinstance(model, nn.Module) and not callable(model):
        raise TicketlabError(f"model must be an nn.Module or a factory (seed -> nn.Module), not {type(model).__name__}")
    dev = resolve_device(device)
    model, imported = _adopted(model)
    data, fingerprints = _user_data(train, test, val, cfg, output_fn, dev)
    problem = user_problem(model, data, cfg.imp.seed)
    classes = _output_width(problem.init_model(0), data)
    _check_labels(data, classes)
    _check_batch_norm(problem.init_model(0), cfg.train.batch_size)
    # A run directory belongs to these exact data: resuming with other data is refused.
    problem = replace(problem, data=replace(data, num_classes=classes)).with_identity(data=fingerprints)
    if output_fn is not None:
        problem = problem.with_identity(output_fn=getattr(output_fn, "__qualname__", type(output_fn).__name__))
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="ticketlab-"))
    try:
        run = run_imp(  # progress None: not even a line per job
            cfg,
            problem,
            run_dir,
            progress=progress or None,
            quiet=not progress,
            start_mask=imported or None,
            batch_jobs=batch_jobs,
            sparse_kernels=sparse_kernels,
            tensorboard=tensorboard,
        )
        search = TicketSearch(run, run.results(cfg), run.ticket(level_count(cfg), 0, dev))
    except BaseException:
        if out is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if out is None:
        # gone with the last reference to the search or its run (`find_ticket(...).run` keeps it), or at exit
        weakref.finalize(search.run, shutil.rmtree, run_dir, ignore_errors=True)
    return search


def _user_data(train, test, val, cfg: C.ExperimentConfig, output_fn, dev: torch.device):
    """The caller's data as a :class:`Dataset` on ``dev`` (validation split off when asked), and the fingerprints
    of its splits; TicketlabError for data that cannot be read."""
    tr, te = tensors_from(train, "train"), tensors_from(test, "test")
    check_like(te, tr, "test")
    if val is not None:
        if cfg.data.val_size:
            raise TicketlabError("give either val= data or the val_size option, not both")
        va = tensors_from(val, "val")
        check_like(va, tr, "val")
    else:
        tr, va = split_validation(tr, cfg.data.val_size)
    objective = Objective(output=output_fn) if output_fn is not None else CLASSIFICATION
    fingerprints = [fingerprint(tr), fingerprint(te), fingerprint(va) if va is not None else None]
    return Dataset("user", tr, te, va, 0, objective=objective).to(dev), fingerprints


def _check_labels(data: Dataset, classes: int) -> None:
    for split, name in ((data.train, "train"), (data.test, "test"), (data.val, "val")):
        if split is not None:
            check_labels(split, name, classes)


def find_supermask(
    model: nn.Module,
    train,
    test,
    /,
    *,
    method: str = "edge-popup",
    k: float = 0.5,
    weights: str = "init",
    rescale: bool = False,
    binary_activations: bool = False,
    seed: int = 0,
    device: str = "auto",
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    **options: Any,
) -> SupermaskResult:
    """Learn a supermask over ``model``'s current weights, frozen (strong lottery tickets, LITERATURE.md section 8):
    :func:`ticketlab.supermask.learn_supermask` on your own network and data.

    ``train`` / ``test``, ``output_fn``: as for :func:`find_ticket`. ``method``: "zhou", "edge-popup" or "biprop";
    ``k``: the fraction of each layer kept (zhou: the starting keep probability); ``weights``: "init" (the model's
    weights as they are) or "signed-constant" (replaced in place by sign(w) * sqrt(2 / fan_in) / sqrt(k));
    ``rescale`` (zhou), ``binary_activations`` (biprop). ``options``: training fields by name, applied to the
    scores: ``steps="5ep", lr=0.1, optimizer="sgd", momentum=0.9, schedule="cosine", batch_size=128``. Returns a
    :class:`~ticketlab.supermask.SupermaskResult` (the wrapped network, the mask, test accuracy with the learned
    mask and with a random mask of its per-layer density). Nothing is written to disk. TicketlabError for bad
    options or data, before anything is trained.
    """
    train_fields = {f.name for f in C.fields_of("train")}
    unknown = sorted(set(options) - train_fields)
    if unknown:
        raise TicketlabError(
            f"find_supermask got unknown option(s) {unknown}; training options: {sorted(train_fields)}"
        )
    if not isinstance(model, nn.Module):
        raise TicketlabError(f"model must be an nn.Module, not {type(model).__name__}")
    cfg = C.from_dict(C.merge(C.ExperimentConfig().to_dict(), {"train": options}))
    dev = resolve_device(device)
    adopted, imported = adopt(model)
    if imported:
        raise TicketlabError(
            "the model is pruned with torch.nn.utils.prune; a supermask learns its own mask: pass it unpruned"
        )
    check_supported(adopted)
    data, _ = _user_data(train, test, None, cfg, output_fn, dev)
    adopted.to(dev)
    _check_labels(data, _output_width(adopted, data))
    _check_batch_norm(adopted, cfg.train.batch_size)
    return learn_supermask(
        adopted,
        data,
        cfg.train,
        method=method,
        k=k,
        weights=weights,
        rescale=rescale,
        binary_activations=binary_activations,
        seed=seed,
        data_seed=seed,
    )


def _adopted(model: nn.Module | Callable[[int], nn.Module]):
    """The model with layers pruned by torch.nn.utils.prune taken over, and their imported masks (the run's
    starting mask); a factory's models must not be pruned that way (one mask per replicate is not a ticket)."""
    if isinstance(model, nn.Module):
        adopted, masks = adopt(model)
        check_supported(adopted)
        return adopted, masks
    if not callable(model):
        return model, {}
    try:
        inspect.signature(model).bind(0)
    except TypeError:
        raise TicketlabError(
            f"a model factory is called with one argument, the seed: {getattr(model, '__name__', model)!r} cannot "
            "be (pass e.g. lambda seed: Net())"
        ) from None
    except ValueError:  # no signature to read (a builtin): let the call say
        pass

    def factory(seed: int):
        made = model(seed)
        if isinstance(made, nn.Module):
            if adopt(made)[1]:
                raise TicketlabError(
                    "the model factory returns a model pruned with torch.nn.utils.prune; pass one model instance "
                    "instead (its mask becomes the starting mask)"
                )
            check_supported(made)
        return made

    return factory, {}


def _output_width(model: nn.Module, data: Dataset) -> int:
    """The number of class scores the model gives (C), from one forward pass on two training examples."""
    x = data.train.inputs(slice(0, 2))
    with torch.no_grad():
        try:
            output = model.eval()(x)
        except Exception as e:  # noqa: BLE001 -- report a shape mismatch as the user's error
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TicketlabError(
                f"the model cannot take the training inputs of shape {tuple(x.shape[1:])}: {first}{integer_hint(x)}"
            ) from e
        try:
            scores = data.objective.logits(output)
        except TicketlabError:
            raise
        except Exception as e:  # noqa: BLE001 -- the user's output_fn failing
            raise TicketlabError(f"output_fn failed on the model's output: {e}") from e
    if not torch.is_tensor(scores) or scores.dim() != 2 or scores.shape[0] != len(x):
        shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise TicketlabError(
            f"the model must give class scores of shape (N, classes); for {len(x)} examples it gave {shape} "
            "(pass output_fn= to pick them out of its output)"
        )
    return scores.shape[1]


def _check_batch_norm(model: nn.Module, batch_size: int) -> None:
    """BatchNorm cannot normalise a training batch of one example (every batch has ``batch_size`` examples)."""
    if batch_size >= 2:
        return
    norms = [name for name, m in model.named_modules() if isinstance(m, _BATCH_NORMS)]
    if norms:
        raise TicketlabError(
            f"batch_size {batch_size} cannot train the BatchNorm layer {norms[0]!r}, which normalises over the "
            "batch; use batch_size >= 2"
        )


_BATCH_NORMS = (*BATCH_NORMS, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)
