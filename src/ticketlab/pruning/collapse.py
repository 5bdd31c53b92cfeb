"""Layer collapse and effective sparsity: which kept weights still lie on a path from the input to the outputs.

A mask can empty a layer, or leave no path from the input to the outputs (SNIP at extreme sparsity, a global
threshold over layers of very different scales); the network then cannot learn, whatever its density says. Short
of that, a kept weight on no input-to-output path of kept weights does nothing: the *effective* density counts only
the others (Vysogorets & Kempe 2023, "Connectivity Matters: Neural Network Pruning Through the Lens of Effective
Sparsity", JMLR 24). Both are read off one structural computation, :func:`effective_mask`'s path counter, which
works for any module and any mask over its parameters (collapse is checked on every new mask, ``--on-collapse``;
the effective density is recorded for every job).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.prunable import NORM_LAYERS
from ticketlab.training.objectives import logits_of

# Modules whose output the counter takes to be their input: normalisation (which would turn an all-equal input
# into zeros) and the sigmoid (which maps 0 to 1/2, so a unit cut off from the input would look reached).
PASS_THROUGH = (
    *NORM_LAYERS,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
    nn.LocalResponseNorm,
    nn.Sigmoid,
    nn.LogSigmoid,
)
SOFTMAXES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)  # every output depends on every input along ``dim``
MAX_POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
ADAPTIVE_MAX_POOLS = {nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}
CONVS = (F.conv1d, F.conv2d, F.conv3d)
ADAPTIVE_AVG_POOLS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)

Logits = Callable[[Any], torch.Tensor]


def effective_mask(model: nn.Module, mask: Mask, example: Any, logits: Logits = logits_of) -> Mask:
    """The kept weights that lie on some path of kept weights from the input to an output (effective sparsity,
    Vysogorets & Kempe 2023): a mask over the same names, a subset of ``mask``.

    ``mask``: parameter name (as ``model.named_parameters()`` gives it; a tied tensor under its first name) ->
    bool tensor of its shape, over any parameters of any modules. ``example``: one input batch (a tensor, or a
    tuple / dict of them, as the model takes it); only its shapes and dtypes are used. ``logits``: the outputs in
    what the model returns (:func:`~ticketlab.training.objectives.logits_of` by default).

    How: a float64 copy in eval mode (float32 when its forward casts to it) counts paths (``model`` is left
    untouched, BatchNorm statistics included). Each masked tensor becomes its 0/1 mask, every other floating
    parameter 1 where nonzero (structure, not signs), biases 0; each tensor is divided by its fan-in (numel / first
    dimension), so layers average rather than sum and the gates of fused recurrent layers never saturate (a
    saturated sigmoid has a derivative of exactly 0). Norm layers and sigmoids pass their input through; softmax
    modules give every position the sum along their ``dim``; an ``nn.Embedding`` / ``EmbeddingBag`` emits at every
    position the column sums of its table (any token is an input); ``nn.MaxPool*`` / ``AdaptiveMaxPool*`` become sum
    / average pools of the same geometry, so every input of a window is reached, not only the argmax;
    ``nn.MultiheadAttention`` becomes ``out_proj(sum_k (1 + q.k) v)`` per head (the softmax of real attention is
    positive whatever q and k are, and is not monotone, so its gradient cannot be read). Fed all ones (integer
    inputs stay integer, so embeddings run), the sum R of the outputs is positive exactly where a path exists, and a
    kept weight is effective iff dR/dw != 0 (positive, but for a GRU's update gate, which interpolates between the
    old state and the new). Every module's output, and every gradient at it, is divided by its detached maximum,
    which keeps the zeros and keeps deep networks' path counts within range.

    Assumes what the model computes between modules maps 0 to 0 and increases on positive inputs: ReLU, GELU, SiLU,
    tanh, sums, products and recurrent layers are fine (an LSTM or GRU gate multiplies a zero candidate). Limits:
    functional calls are not replaced (``F.max_pool2d`` reaches only the argmax, ``F.softmax`` / ``F.layer_norm`` /
    ``F.sigmoid`` / softplus break the assumption, ``.detach()`` cuts paths); a parameter that is added rather than
    multiplied and not named ``bias`` (a positional embedding), and a tensor the forward makes, count as inputs;
    attention masks are ignored; a
    kept bias counts as effective when its unit reaches an output. Raises TicketlabError when the mask does not fit
    the model or the model cannot be run this way.
    """
    _, grads = _count_paths(model, mask, example, logits, grads=True)
    return {n: m & (grads[n] != 0).to(m.device) for n, m in mask.items()}


def effective_density(model: nn.Module, mask: Mask, example: Any, logits: Logits = logits_of) -> float:
    """Fraction of the masked weights that are kept and effective (:func:`effective_mask`): at most the density."""
    return M.count(effective_mask(model, mask, example, logits)) / max(M.size(mask), 1)


def dead_outputs(model: nn.Module, mask: Mask, example: Any, logits: Logits = logits_of) -> tuple[int, int]:
    """How many of the outputs (over the batch ``example``) no path from the input reaches through kept weights,
    and of how many; counted as in :func:`effective_mask`."""
    out, _ = _count_paths(model, mask, example, logits, grads=False)
    return int((out.flatten() == 0).sum()), out.numel()


def collapse(model: nn.Module, mask: Mask, example: Any, logits: Logits = logits_of) -> list[str]:
    """Layer collapse: the masked weights (not biases, not norm layers') with nothing left, and whether no path
    from the input reaches any output. (Some outputs cut off while others are reached is not collapse: it happens
    at extreme sparsity by design.) Arguments as in :func:`effective_mask`."""
    problems = [
        f"{n} has no weight left"
        for n, m in mask.items()
        if m.numel() and not bool(m.any()) and not _is_bias(n) and not isinstance(_owner(model, n), NORM_LAYERS)
    ]
    dead, outputs = dead_outputs(model, mask, example, logits)
    if dead == outputs:
        problems.append("no path from the input reaches any output")
    return problems


# ------------------------------------------------------------------------------------------- the path counter


def _count_paths(
    model: nn.Module, mask: Mask, example: Any, logits: Logits, grads: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The counter's outputs (detached) and, when ``grads``, dR/dw of every masked tensor (zeros when unused).
    Counted in float64; in float32 when the model's forward insists on it (``x.float()`` on integer images)."""
    M.check_mask(model, mask)
    try:
        return _counter_pass(model, mask, example, logits, grads, torch.float64)
    except (RuntimeError, TypeError, ValueError) as e:
        try:
            return _counter_pass(model, mask, example, logits, grads, torch.float32)
        except (RuntimeError, TypeError, ValueError):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TicketlabError(
                f"the path counter (layer collapse, effective density) cannot run the model on all-ones inputs "
                f"shaped like the example: {first}; pass an example the model takes, in float64 or float32"
            ) from e


def _counter_pass(
    model: nn.Module, mask: Mask, example: Any, logits: Logits, grads: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net = _copy(model).eval()
    for module in net.modules():
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                plist[0] = _Product()  # the structure of the originals, not their transformation
                del plist[1:]
    net.to(dtype)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if not p.is_floating_point():
                continue
            if _is_bias(name):
                p.zero_()
            else:
                p.copy_(mask[name].to(p.device, p.dtype) if name in mask else (p != 0).to(p.dtype))
                p.div_(max(p.numel() // p.shape[0], 1) if p.dim() >= 2 else 1)
            # every floating parameter requires grad, which also keeps attention off its fused fast path
            p.requires_grad_(True)
    for module in net.modules():
        module.register_forward_hook(_counter_hook, with_kwargs=True)
    device = next(iter(params.values())).device if params else None
    inputs = _ones(example, device, dtype)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # tensors the model makes itself (a zero initial state) match
    try:
        with torch.enable_grad():
            output = net(**inputs) if isinstance(inputs, dict) else net(*inputs)
            out = logits(output)
            wanted = [params[n] for n in mask]
            found = (
                torch.autograd.grad(out.sum(), wanted, allow_unused=True)
                if grads and out.requires_grad and wanted
                else [None] * len(wanted)
            )
    finally:
        torch.set_default_dtype(default)
    return out.detach(), {
        n: torch.zeros(m.shape) if g is None else g.detach() for (n, m), g in zip(mask.items(), found)
    }


class _Product(nn.Module):
    """A parametrisation's structure: nonzero where each of its originals is (weight_norm's g and v)."""

    def forward(self, *originals: torch.Tensor) -> torch.Tensor:
        out = max(originals, key=torch.Tensor.numel)
        for o in originals:
            if o is not out and _broadcasts(o.shape, out.shape):
                out = out * o
        return out


def _broadcasts(shape: torch.Size, to: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, to) == to
    except RuntimeError:
        return False


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy; a computed tensor held as an attribute (torch.nn.utils.prune's ``weight``, which deepcopy
    refuses) is copied detached, to be computed again by the copy's own hooks."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if torch.is_tensor(value) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _ones(example: Any, device: torch.device | None, dtype: torch.dtype) -> tuple | dict:
    """All-ones inputs shaped like ``example``: floating ones in ``dtype``, integer ones (token 1) of their dtype."""

    def one(t: Any) -> Any:
        if not torch.is_tensor(t):
            return t
        kind = dtype if t.is_floating_point() else t.dtype
        return torch.ones(t.shape, dtype=kind, device=device if device is not None else t.device)

    if isinstance(example, dict):
        return {k: one(v) for k, v in example.items()}
    return tuple(one(t) for t in example) if isinstance(example, (tuple, list)) else (one(example),)


def _tensor_name(name: str) -> str:
    """The module attribute a parameter name stands for (``weight`` for ``0.parametrizations.weight.original1``)."""
    parts = name.split(".")
    return parts[parts.index("parametrizations") + 1] if "parametrizations" in parts[:-1] else parts[-1]


def _is_bias(name: str) -> bool:
    return "bias" in _tensor_name(name)


def _owner(model: nn.Module, name: str) -> nn.Module:
    """The module a parameter belongs to (the parametrised module, for an original)."""
    if name.startswith("parametrizations."):
        return model
    path = name.split(".parametrizations.")[0] if ".parametrizations." in name else name.rpartition(".")[0]
    return model.get_submodule(path)


# ------------------------------------------------------------------------------------------- module surrogates


def _counter_hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
    return _rescale(_surrogate(module, args, kwargs, out))


def _surrogate(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
    """What ``module`` computes in the path counter, when it is not what it computes in the network."""
    x = args[0] if args else next(iter(kwargs.values()), None)
    if isinstance(module, PASS_THROUGH) and torch.is_tensor(x):
        return x
    if isinstance(module, SOFTMAXES):
        return x if module.dim is None else x.sum(module.dim, keepdim=True).expand_as(x)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return module.weight.sum(0).expand(out.shape)
    if isinstance(module, nn.MultiheadAttention):
        return (_attention(module, args, kwargs), *out[1:])
    for kinds, pool in ((MAX_POOLS, _window_sum), (ADAPTIVE_MAX_POOLS, _adaptive_mean)):
        d = next((d for t, d in kinds.items() if isinstance(module, t)), None)
        if d is not None:
            values = out[0] if isinstance(out, tuple) else out  # (values, indices) with return_indices
            pooled = pool(module, x, d, values.shape[-d:])
            return (pooled, *out[1:]) if isinstance(out, tuple) else pooled
    return out


def _window_sum(module: nn.Module, x: torch.Tensor, d: int, size: torch.Size) -> torch.Tensor:
    """Sums over a max-pool's windows (kernel, stride, padding, dilation, ceil mode), by a convolution with ones."""

    def n(v: Any) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * d

    kernel, stride, padding = n(module.kernel_size), n(module.stride or module.kernel_size), n(module.padding)
    lead = x.shape[:-d]
    flat = x.reshape(-1, 1, *x.shape[-d:])
    # padded on the right by a stride more, for ceil mode's last window; cropped to the module's output size
    pad = [p for i in reversed(range(d)) for p in (padding[i], padding[i] + stride[i])]
    y = CONVS[d - 1](F.pad(flat, pad), flat.new_ones(1, 1, *kernel), stride=stride, dilation=n(module.dilation))
    y = y[(..., *(slice(0, s) for s in size))]
    return y.reshape(*lead, *size)


def _adaptive_mean(module: nn.Module, x: torch.Tensor, d: int, size: torch.Size) -> torch.Tensor:
    return ADAPTIVE_AVG_POOLS[d - 1](x, tuple(size))


def _attention(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> torch.Tensor:
    """``out_proj(sum_k (1 + q.k) v / keys)`` per head: q and k matter where they reach, v always carries."""
    q_in, k_in, v_in = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(("query", "key", "value")))
    batched = q_in.dim() == 3

    def to_bld(t: torch.Tensor) -> torch.Tensor:  # (batch, length, features)
        return t.unsqueeze(0) if not batched else t if m.batch_first else t.transpose(0, 1)

    q_in, k_in, v_in = to_bld(q_in), to_bld(k_in), to_bld(v_in)
    if m.in_proj_weight is not None:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    heads = m.num_heads
    q, k, v = (t @ w.T for t, w in ((q_in, wq), (k_in, wk), (v_in, wv)))
    q, k, v = (t.reshape(*t.shape[:2], heads, -1) for t in (q, k, v))  # (B, L, heads, head_dim)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k)
    s = _unit_max(s)
    o = torch.einsum("bhqk,bkhd->bqhd", 1 + s, v).reshape(*q.shape[:2], -1) / max(k.shape[1], 1)
    out = o @ m.out_proj.weight.T
    return out.squeeze(0) if not batched else out if m.batch_first else out.transpose(0, 1)


def _rescale(out: Any) -> Any:
    """Each floating tensor of a module's output, and the gradient reaching it, divided by its detached maximum."""
    if torch.is_tensor(out):
        if not out.is_floating_point() or not out.numel():
            return out
        out = _unit_max(out)
        if out.requires_grad:
            out.register_hook(_unit_max)
        return out
    if isinstance(out, tuple):
        items = [_rescale(o) for o in out]
        return type(out)(*items) if hasattr(out, "_fields") else tuple(items)
    if isinstance(out, list):
        return [_rescale(o) for o in out]
    if isinstance(out, dict):
        return {k: _rescale(v) for k, v in out.items()}
    return out


def _unit_max(t: torch.Tensor) -> torch.Tensor:
    """``t`` divided by its detached largest magnitude (zeros stay zeros)."""
    return t / t.detach().abs().amax().clamp_min(torch.finfo(t.dtype).tiny) if t.numel() else t
