"""Sparse kernels: a Linear layer that stores and multiplies only its kept weights (CSR), for inference and training.

:class:`SparseLinear` holds the kept weights of a masked ``nn.Linear`` as one parameter ``values`` (the nonzeros in
row-major order) and its pattern as CSR index buffers. Forward is ``torch.sparse.mm`` (CSR x dense); backward gives
the input gradient through the transposed pattern (CSR again) and the gradient of the kept values only, by
``torch.sparse.sampled_addmm`` (``grad_out^T @ x`` computed at the pattern's entries only). The pattern is fixed:
what is pruned stays pruned, so no mask is needed while training.

Whether it is faster depends on the shape, density, batch and machine: :data:`BREAK_EVEN` records, per layer
shape, the density below which it beat the dense layer in a training step at batch 128, measured by
``benchmarks/sparse_speed.py``; :func:`sparsify` swaps a masked model's Linear layers for SparseLinear where that
table says it wins, :func:`densify` swaps them back. Convolutions stay dense (left out: an im2col formulation
pays for the unfolded input, which the measured gains at these densities do not cover).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.errors import TicketlabError

# Measured 2026-11-30 by benchmarks/sparse_speed.py on the development container (x86_64, torch 2.13 CPU
# with MKL, 1 thread, 2 cores shared with other work): training step (forward + backward) at batch 128, (out, in)
# -> the largest density below which SparseLinear beat the masked dense layer at every density measured
# (50, 20, 10, 5, 2, 1, 0.5%). At batch 1 it lost below 1024x1024 at every density. Machine-bound: re-measure
# elsewhere (the lead re-runs it on a quiet machine). Shapes not listed use the nearest by weight count.
BREAK_EVEN: dict[tuple[int, int], float] = {
    (300, 784): 0.1,
    (100, 300): 0.01,
    (1024, 1024): 0.1,
    (4096, 4096): 0.2,
}


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix from buffers SparseLinear built (so valid: no invariant checks), without the beta warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _SparseLinearFunction(torch.autograd.Function):
    """y = x W^T + b with W in CSR; gradients for x, the kept values of W, and b."""

    @staticmethod
    def forward(ctx, x, values, bias, crow, col, tcrow, tcol, perm, out_features):  # noqa: ANN001, ANN205
        in_features = x.shape[-1]
        flat = x.reshape(-1, in_features)  # (N, in)
        w = _csr(crow, col, values, (out_features, in_features))
        y = torch.sparse.mm(w, flat.T).T  # (N, out)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(flat, values, crow, col, tcrow, tcol, perm)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        return y.reshape(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        flat, values, crow, col, tcrow, tcol, perm = ctx.saved_tensors
        out_features, in_features = len(crow) - 1, flat.shape[1]
        g = grad.reshape(-1, out_features)  # (N, out)
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            wt = _csr(tcrow, tcol, values[perm], (in_features, out_features))
            gx = torch.sparse.mm(wt, g.T).T.reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            pattern = _csr(crow, col, torch.zeros_like(values), (out_features, in_features))
            gv = torch.sparse.sampled_addmm(pattern, g.T.contiguous(), flat, beta=0.0).values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gv, gb, None, None, None, None, None, None


class SparseLinear(nn.Module):
    """A Linear layer computing with its kept weights only (CSR). ``values``: (nnz,) the kept weights in
    row-major order; ``bias``: (out,) or None. Input (..., in) -> output (..., out), as ``nn.Linear``."""

    def __init__(self, linear: nn.Linear, keep: torch.Tensor):
        super().__init__()
        if tuple(keep.shape) != tuple(linear.weight.shape):
            raise TicketlabError(f"keep has shape {tuple(keep.shape)}, the weight {tuple(linear.weight.shape)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        keep = keep.to(linear.weight.device, torch.bool)
        rows, cols = keep.nonzero(as_tuple=True)  # row-major
        counts = torch.bincount(rows, minlength=self.out_features)
        self.register_buffer("crow", torch.cat([counts.new_zeros(1), counts.cumsum(0)]))
        self.register_buffer("col", cols)
        perm = torch.argsort(cols * self.out_features + rows)  # the same entries in column-major order
        tcounts = torch.bincount(cols, minlength=self.in_features)
        self.register_buffer("tcrow", torch.cat([tcounts.new_zeros(1), tcounts.cumsum(0)]))
        self.register_buffer("tcol", rows[perm])
        self.register_buffer("perm", perm)
        self.values = nn.Parameter(linear.weight.detach()[keep].clone(), linear.weight.requires_grad)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), linear.bias.requires_grad)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SparseLinearFunction.apply(
            x, self.values, self.bias, self.crow, self.col, self.tcrow, self.tcol, self.perm, self.out_features
        )

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight with zeros where pruned."""
        w = self.values.new_zeros(self.out_features, self.in_features)
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=w.device), self.crow.diff())
        w[rows, self.col] = self.values.detach()
        return w

    def to_linear(self) -> nn.Linear:
        """The ``nn.Linear`` it computes (weights zero where pruned)."""
        w = self.values
        new = nn.utils.skip_init(
            nn.Linear, self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype
        )
        new.weight.data.copy_(self.dense_weight())
        new.weight.requires_grad_(self.values.requires_grad)
        if self.bias is not None:
            new.bias.data.copy_(self.bias.detach())
            new.bias.requires_grad_(self.bias.requires_grad)
        return new.train(self.training)

    def extra_repr(self) -> str:
        nnz = len(self.col)
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"


def break_even(out_features: int, in_features: int, table: dict[tuple[int, int], float] | None = None) -> float:
    """The density below which a SparseLinear of this shape is faster than dense (:data:`BREAK_EVEN`, the
    nearest measured shape by weight count)."""
    table = BREAK_EVEN if table is None else table
    size = math.log(out_features * in_features)
    nearest = min(table, key=lambda s: abs(math.log(s[0] * s[1]) - size))
    return table[nearest]


def sparsify(
    model: nn.Module, mask: M.Mask, *, table: dict[tuple[int, int], float] | None = None, always: bool = False
) -> list[str]:
    """Replace, in place, each ``nn.Linear`` whose weight ``mask`` covers and whose density is at most its
    :func:`break_even` (every masked one with ``always``) by a :class:`SparseLinear` holding its kept weights.
    Returns the names of the layers replaced. Their parameters are then ``NAME.values`` (no ``NAME.weight``): train
    them with a plain optimizer (the pattern keeps pruned weights at 0), not with a mask naming the weight."""
    M.check_mask(model, mask)
    done = []
    for name, m in list(model.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if type(m) is not nn.Linear or key not in mask:
            continue
        keep = mask[key]
        if always or float(keep.float().mean()) <= break_even(m.out_features, m.in_features, table):
            _replace(model, name, SparseLinear(m, keep).train(m.training))
            done.append(name)
    return done


def densify(model: nn.Module) -> list[str]:
    """Replace, in place, every :class:`SparseLinear` by the ``nn.Linear`` it computes; returns their names."""
    done = []
    for name, m in list(model.named_modules()):
        if isinstance(m, SparseLinear):
            _replace(model, name, m.to_linear())
            done.append(name)
    return done


def swap_in(model: nn.Module, mask: M.Mask, *, table: dict[tuple[int, int], float] | None = None) -> dict:
    """For training: put a :class:`SparseLinear` in place of each ``nn.Linear`` that :func:`sparsify` would
    replace and that nothing else holds (no tied weight, no hooks); returns ``{name: the original module}`` for
    :func:`swap_out`, which writes the trained values back into those very modules (so references to them, and
    the model's state-dict keys, stay valid)."""
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    swapped = {}
    for name, m in list(model.named_modules()):
        key = f"{name}.weight"
        if not name or type(m) is not nn.Linear or key not in mask or owners[id(m.weight)] > 1:
            continue
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or not m.weight.requires_grad:
            continue
        if float(mask[key].float().mean()) <= break_even(m.out_features, m.in_features, table):
            _replace(model, name, SparseLinear(m, mask[key]).train(m.training))
            swapped[name] = m
    return swapped


@torch.no_grad()
def swap_out(model: nn.Module, swapped: dict) -> None:
    """Undo :func:`swap_in`: each original Linear gets the trained weights (zero where pruned) and bias back,
    and its place in the model."""
    for name, original in swapped.items():
        sparse = model.get_submodule(name)
        original.weight.copy_(sparse.dense_weight())
        if original.bias is not None:
            original.bias.copy_(sparse.bias)
        _replace(model, name, original.train(sparse.training))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise TicketlabError("sparsify swaps layers inside a model; wrap a bare nn.Linear in nn.Sequential")
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
