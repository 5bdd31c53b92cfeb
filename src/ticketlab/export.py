"""A ticket as a smaller dense model: the neurons and filters it pruned (or left dead) physically removed.

:func:`export` does it for a structured mask (the units it silenced), :func:`ticketlab.pruning.compact.compact`
for any mask (every dead unit, constants folded into biases); :func:`save_exported` writes the result as a
torch.export program; :func:`export_ticket` compacts and saves a run's ticket, structured or not, its outputs
checked against the masked network on test inputs before anything is written.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.data import load_configured
from ticketlab.errors import TicketlabError
from ticketlab.problem import registry_problem
from ticketlab.pruning import example_input, find_units, silent_units
from ticketlab.pruning.compact import compact, replace_module, slim_layer, slim_norm
from ticketlab.rundir import RunDir
from ticketlab.store import atomic_write_bytes, load_tensors

TOLERANCE = 1e-4  # relative to the largest output magnitude: float reassociation, not a changed function


def export_ticket(
    run_dir: Path, level: int, out: Path, *, replicate: int = 0, weights: str = "final"
) -> dict[str, Any]:
    """Export the ticket of ``level`` of a registry-model run to ``out`` (.pt2), compacted for inference
    (:func:`~ticketlab.pruning.compact.compact`: structured or unstructured); return what was measured."""

    run = RunDir(run_dir)
    if run.user_model:  # a run of the user's own nn.Module: the command line cannot rebuild it
        raise TicketlabError(
            f"{run.path} was run on your own model; export it in Python: "
            "ticketlab.export.export(model, ticket.mask, input_shape)"
        )
    cfg = run.config()
    ticket = run.ticket(level, replicate)  # TicketlabError if the level has not finished
    data = load_configured(cfg.data, torch.device("cpu"))
    model = registry_problem(cfg, data).init_model(replicate)
    job = run.job(replicate, level, "ticket")
    final = load_tensors(job.final, sha256=run.recorded(job, job.final))
    model.load_state_dict(final if weights == "final" else ticket.state)
    M.apply_mask(model, ticket.mask)
    small, _, _ = compact(model, ticket.mask, data.input_shape)
    model.eval()
    small.eval()
    x = data.test.inputs(slice(0, 256))
    with torch.no_grad():
        want, got = model(x), small(x)
    max_diff = float((want - got).abs().max())
    if max_diff > TOLERANCE * max(float(want.abs().max()), 1.0):
        raise AssertionError(f"the exported model's outputs differ from the ticket's by {max_diff:.3g}")
    save_exported(small, Path(out), data.input_shape)
    return {
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in small.parameters()),
        "nonzero": sum(int((p != 0).sum()) for p in small.parameters()),
        "checked": len(x),
        "max_diff": max_diff,
    }


def export(model: nn.Module, mask: M.Mask, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of the model with the mask applied and every silent unit (see
    :func:`ticketlab.pruning.silent_units`: those a structured mask from :func:`ticketlab.pruning.expand` prunes)
    physically removed. In eval mode it computes what the masked model computes. Unit layers, their BatchNorms
    and their consumers are replaced by smaller modules of the same kinds (forward hooks on them are not carried
    over); unstructured zeros stay zeros in the smaller weights. The result is the model's own class.
    """
    M.check_mask(model, mask)
    units = find_units(model, input_shape)
    alive = {k: ~v for k, v in silent_units(model, units, mask).items()}
    out = M.apply_mask(copy.deepcopy(model), mask)
    modules = dict(out.named_modules())
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    for u in units:
        keep = alive[u.layer].nonzero().flatten().to(modules[u.layer].weight.device)
        if len(keep) == 0:
            raise TicketlabError(f"layer {u.layer} has no units left; the network is disconnected")
        if len(keep) == u.count:
            continue
        out_keep[u.layer] = keep
        for name, per in u.consumers:
            # with a flatten between them, unit j feeds the consumer's inputs j*per ... (j+1)*per - 1
            in_keep[name] = (keep[:, None] * per + torch.arange(per, device=keep.device)).flatten()
        if u.norm is not None:
            replace_module(out, u.norm, slim_norm(modules[u.norm], keep))
    for name in out_keep.keys() | in_keep.keys():
        replace_module(out, name, slim_layer(modules[name], out_keep.get(name), in_keep.get(name)))
    return out


def save_exported(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> None:
    """Save a model as a torch.export program (``.pt2``) in eval mode, with a dynamic batch size.

    The file is loadable without ticketlab or the model's class (``torch.export.load(path).module()``);
    written atomically, so an interrupted save leaves the old file or the new one.
    """
    example = example_input(model, 2, input_shape)  # batch 2: torch.export would specialise a batch of 1
    modes = {m: m.training for m in model.modules()}
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    try:
        try:
            program = torch.export.export(model.eval(), (example,), dynamic_shapes=dynamic)
        except Exception:
            # non-strict export fixes the batch size where forward calls len(x); strict export (dynamo) does not
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=True)
    except Exception as e:
        raise TicketlabError(
            f"torch.export cannot export {type(model).__name__} with a dynamic batch size "
            f"({type(e).__name__}: {e}); save its state_dict instead"
        ) from e
    finally:
        for m, training in modes.items():
            m.training = training
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_exported(path: str | Path) -> nn.Module:
    """The module saved by ``save_exported``: a torch.fx GraphModule fixed in eval mode (torch.export's modules
    refuse ``.train()`` and ``.eval()``), taking any batch size."""
    if not Path(path).is_file():
        raise TicketlabError(f"no exported model at {path}; create one with save_exported")
    return torch.export.load(Path(path)).module()
