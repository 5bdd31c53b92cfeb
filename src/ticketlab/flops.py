"""Compute accounting: the theoretical FLOPs of a (masked) network's forward pass, and of a training job.

Convention (Kaplan et al. 2020, "Scaling laws for neural language models", sec. 2.1; Evci et al. 2020, "Rigging
the lottery", appendix H): a FLOP is a multiply or an add, so one multiply-accumulate (MAC) of a weight with an
activation is 2 FLOPs; only weights count (biases, activations, norms, pooling and the softmax are left out).
A masked network counts only its kept weights: the FLOPs a sparse kernel would need, not what dense hardware does.
Training one example costs 3 forward passes (the forward, and a backward of twice that: the gradient for the
inputs and the gradient for the weights), so a job costs ``3 * forward * examples_trained + forward *
examples_evaluated``.

Counted per layer, from forward hooks: Linear (kept weights x positions), Conv1d/2d/3d (kept weights x output
positions), ConvTranspose1d/2d/3d (kept weights x input positions), RNN / LSTM / GRU (every ``weight_*`` kept,
per time step), MultiheadAttention's four projections (q and the output per query token, k and v per key token;
the attention products q.k and a.v, which hold no weights, are not counted), Embedding 0 (a lookup).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.errors import TicketlabError

FLOPS_PER_MAC = 2
BACKWARD_FACTOR = 2  # the backward pass costs twice the forward: gradients for the inputs and for the weights
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


def forward_flops(model: nn.Module, example: Any, mask: M.Mask | None = None, *, batch_size: int | None = None) -> int:
    """FLOPs of one forward pass per example: 2 x the multiply-accumulates of the weights ``mask`` keeps (all,
    without a mask) in Linear, conv, transposed conv, recurrent and attention-projection layers.

    ``example``: one batch as the model takes it (a tensor, or a tuple / dict of them); ``batch_size``: how many
    examples it holds (default: the first dimension of its first tensor). Runs one forward pass with gradients on
    (so that attention's fused fast path, which skips its submodules, is off) in eval mode; the model's modes are
    restored. Raises TicketlabError when the mask does not fit the model.
    """
    if mask is not None:
        M.check_mask(model, mask)
    names = {id(p): n for n, p in model.named_parameters()}

    def alive(p: torch.Tensor, rows: slice = slice(None)) -> int:
        n = names.get(id(p))
        if mask is not None and n in mask:
            return int(mask[n][rows].sum())
        return p[rows].numel()

    total = [0]

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        total[0] += _macs(module, args, kwargs, out, alive)

    hooks = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if _counted(m)]
    modes = {m: m.training for m in model.modules()}
    tensors = list(example.values()) if isinstance(example, dict) else list(_flat(example))
    first = next((t for t in tensors if torch.is_tensor(t)), None)
    batch = batch_size if batch_size is not None else (first.shape[0] if first is not None and first.dim() else 1)
    try:
        model.eval()
        with torch.enable_grad():
            if isinstance(example, dict):
                model(**example)
            else:
                model(*_flat(example))
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return FLOPS_PER_MAC * total[0] // max(batch, 1)


def training_flops(forward: int, examples_trained: int, examples_evaluated: int = 0) -> int:
    """FLOPs of a job: ``(1 + BACKWARD_FACTOR) * forward * examples_trained + forward * examples_evaluated``
    (``forward``: :func:`forward_flops`, per example)."""
    return (1 + BACKWARD_FACTOR) * forward * examples_trained + forward * examples_evaluated


def job_flops(
    model: nn.Module, mask: M.Mask, example: Any, *, examples_trained: int, examples_evaluated: int
) -> dict[str, int]:
    """A job's ``train_flops`` (the kept weights only) and ``dense_flops`` (the same job on the dense network),
    as :func:`training_flops` counts them: the two fields of a job record that ``results.csv`` reports."""
    if examples_trained < 0 or examples_evaluated < 0:
        raise TicketlabError("examples_trained and examples_evaluated must be >= 0; pass the counts the job saw")
    masked, dense = forward_flops(model, example, mask), forward_flops(model, example)
    return {
        "train_flops": training_flops(masked, examples_trained, examples_evaluated),
        "dense_flops": training_flops(dense, examples_trained, examples_evaluated),
    }


def _flat(example: Any) -> list:
    return list(example) if isinstance(example, (tuple, list)) else [example]


def _counted(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, *CONVS, *TRANSPOSED, *RECURRENT, nn.MultiheadAttention))


def _macs(module: nn.Module, args: tuple, kwargs: dict, out: Any, alive: Any) -> int:
    """Multiply-accumulates of one call of ``module`` over the whole batch."""
    x = args[0] if args else next(iter(kwargs.values()))
    if isinstance(module, nn.Linear):
        return alive(module.weight) * (out.numel() // max(module.out_features, 1))
    if isinstance(module, CONVS):
        return alive(module.weight) * (out.numel() // max(module.out_channels, 1))
    if isinstance(module, TRANSPOSED):
        return alive(module.weight) * (x.numel() // max(module.in_channels, 1))
    if isinstance(module, RECURRENT):
        data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
        steps = data.numel() // max(module.input_size, 1)  # time steps x batch
        weights = [p for n, p in module.named_parameters() if n.startswith("weight_")]
        return steps * sum(alive(p) for p in weights)
    if isinstance(module, nn.MultiheadAttention):
        q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(("query", "key", "value")))
        tq, tk, tv = q.numel() // module.embed_dim, k.numel() // module.kdim, v.numel() // module.vdim
        e = module.embed_dim
        if module.in_proj_weight is not None:
            w = module.in_proj_weight
            proj = tq * alive(w, slice(0, e)) + tk * alive(w, slice(e, 2 * e)) + tv * alive(w, slice(2 * e, 3 * e))
        else:
            proj = tq * alive(module.q_proj_weight) + tk * alive(module.k_proj_weight)
            proj += tv * alive(module.v_proj_weight)
        return proj + tq * alive(module.out_proj.weight)
    return 0
