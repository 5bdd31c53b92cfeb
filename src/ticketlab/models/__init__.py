"""Model registry: one factory per architecture, registered by name with a decorator.

A factory takes the input shape (without the batch dimension), the class count and keyword
arguments, and returns an ``nn.Module``; it never moves the model to a device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ticketlab.errors import TicketlabError
from ticketlab.prunable import LAYERS, NORM_LAYERS
from ticketlab.seeds import derive_seed

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register(fn: ModelFactory) -> ModelFactory:
    """Register a factory under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def model_names() -> dict[str, str]:
    """Registered model names with the first line of each factory's docstring."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in _REGISTRY.items()}


def model_arguments(name: str) -> list[str]:
    """The keyword arguments a registered factory takes (after the input shape and class count)."""
    if name not in _REGISTRY:
        raise TicketlabError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}")
    return list(inspect.signature(_REGISTRY[name]).parameters)[2:]


def model_defaults(name: str) -> dict[str, Any]:
    """The default of each keyword argument a registered factory takes (e.g. an MLP's ``widths``)."""
    model_arguments(name)  # TicketlabError for an unknown name
    params = list(inspect.signature(_REGISTRY[name]).parameters.values())[2:]
    return {p.name: p.default for p in params}


def create_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model; unknown names and arguments are user errors."""
    if name not in _REGISTRY:
        raise TicketlabError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}")
    fn = _REGISTRY[name]
    accepted = model_arguments(name)
    bad = [k for k in kwargs if k not in accepted]
    if bad:
        raise TicketlabError(f"model {name!r} takes no argument(s) {bad}; it takes {accepted}")
    return fn(input_shape, num_classes, **kwargs)


NORMS = ("batch", "group", "layer", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation after a conv: BatchNorm; GroupNorm (32 groups, fewer when the channels do not
    divide); LayerNorm over (C, H, W), which is GroupNorm with one group; or none."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise TicketlabError(
        f"norm {kind!r} is not one for conv layers; known: {', '.join(NORMS)} ('rms' is for sequence models)"
    )


def scaled(channels: int, width: float) -> int:
    """A layer's size under the width multiplier (at least 1)."""
    if not width > 0:
        raise TicketlabError(f"width multiplier must be > 0, got {width}")
    return max(1, round(channels * width))


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``input_shape`` as (C, H, W), or a clear error for data that are not images."""
    if len(input_shape) != 3:
        raise TicketlabError(
            f"model {model!r} needs images (C, H, W); this data has examples of shape {tuple(input_shape)}. "
            "Use an image dataset, or mlp / mnist1d_cnn"
        )
    return input_shape  # type: ignore[return-value]


INIT_SCHEMES = ("glorot_normal", "kaiming_normal", "kaiming_uniform", "default")


def initialize(model: nn.Module, scheme: str, seed: int) -> nn.Module:
    """Re-initialise every linear/conv layer in place, deterministically from ``seed``.

    ``glorot_normal`` is the LTH paper's Gaussian Glorot init; biases start at zero for the named
    schemes; any other parameter (embeddings, attention, recurrent cells) is re-drawn by its module's own init under a
    seed derived from ``seed``. ``default`` re-draws every parameter with each module's own ``reset_parameters``
    under the seed (:func:`redraw`), which is what is used for arbitrary user modules.
    """
    if scheme not in INIT_SCHEMES:
        raise TicketlabError(f"unknown init {scheme!r}; known: {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        redraw(model, seed)
        return model
    if any(
        not isinstance(m, LAYERS + NORM_LAYERS) and next(m.parameters(recurse=False), None) is not None
        for m in model.modules()
    ):
        redraw(model, derive_seed(seed, "other modules"))  # embeddings, attention, RNNs: their own init, seeded
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LAYERS):
                w = torch.empty(m.weight.shape)
                if scheme == "glorot_normal":
                    nn.init.xavier_normal_(w, generator=g)
                elif scheme == "kaiming_normal":
                    nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)
                else:
                    nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, NORM_LAYERS):
                m.reset_parameters()
    return model


def signed_constant(model: nn.Module, names: list[str], k: float = 1.0) -> nn.Module:
    """Replace each named weight in place by its signed constant, sign(w) * sqrt(2 / fan_in) / sqrt(k) (Ramanujan
    et al. 2020's "signed Kaiming constant", scaled for a subnetwork keeping the fraction ``k`` of each layer).

    fan_in is as ``torch.nn.init`` computes it, size(1) times the kernel size (``in_features`` for a Linear,
    ``in_channels / groups * kernel size`` for a conv); a 1-d tensor's size.
    Zero weights stay zero. Raises TicketlabError for k outside (0, 1]."""
    if not 0.0 < k <= 1.0:
        raise TicketlabError(f"signed_constant: k={k}; give the fraction of weights kept, in (0, 1]")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            w = params[name]
            fan_in = w[0].numel() if w.dim() > 1 else w.numel()
            w.copy_(torch.sign(w) * (2.0 / (fan_in * k)) ** 0.5)
    return model


def _check_rescale_mask(state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], fn: str) -> None:
    """TicketlabError when ``mask`` names a tensor ``state`` lacks or has another shape than it (``fn``: the caller)."""
    missing = sorted(set(mask) - set(state))
    if missing:
        raise TicketlabError(f"{fn}: the mask names {missing[:3]}, which the state lacks; give the model's own mask")
    for name, m in mask.items():
        if tuple(m.shape) != tuple(state[name].shape):
            raise TicketlabError(
                f"{fn}: mask[{name!r}] has shape {tuple(m.shape)}, the weight {tuple(state[name].shape)}; "
                "give the model's own mask"
            )


def sparse_aware(state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` at sparsity-aware scale: each masked weight tensor (2-d or more) pruned and multiplied by
    1/sqrt(d), d its density under ``mask`` (kept / numel), so a layer drawn with variance sigma_w^2 / fan_in (He:
    2 / fan_in) keeps sigma_w^2 / (d fan_in) = 2 / ((1 - s) fan_in) and the mean-field signal
    (:func:`ticketlab.analysis.signal.mean_field`) stays flat with depth (Lee et al. 2020; Evci et al. 2022,
    "Gradient flow in sparse neural networks": the per-tensor form). Returns copies; pruned entries are exactly zero,
    a 1-d masked tensor (a structured run's bias or norm) is only pruned, tensors outside ``mask`` are as given, and
    an empty layer (d = 0) stays zero. The rule assumes the kept weights are spread over each unit's fan-in, as an
    unstructured mask's are. TicketlabError when ``mask`` names a tensor ``state`` lacks or has another shape."""
    _check_rescale_mask(state, mask, "sparse_aware")
    out = {}
    for name, t in state.items():
        if name not in mask:
            out[name] = t.clone()
            continue
        keep = mask[name].to(t.device, t.dtype)
        kept = int(mask[name].sum())
        scale = (t.numel() / kept) ** 0.5 if t.dim() > 1 and kept else 1.0
        out[name] = t * keep * scale
    return out


def variance_matched(
    state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], sigma_w2: float = 2.0
) -> dict[str, torch.Tensor]:
    """``state`` with each masked weight tensor (2-d or more) pruned and rescaled so that its kept weights' mean
    square is sigma_w^2 / (d fan_in) (He: 2 / ((1 - s) fan_in)), whatever their scale was: the target of
    :func:`sparse_aware`, reached for masks that do not keep a random share of each layer (magnitude, SNIP and
    rewound tickets keep the large weights, so 1/sqrt(d) overshoots). fan_in is ``t[0].numel()`` (``in_features``
    for a Linear, in_channels / groups * kernel size for a conv). Returns copies; pruned entries are exactly zero,
    signs and the relative sizes within a layer are kept, a 1-d masked tensor is only pruned, tensors outside
    ``mask`` are as given, and an empty or all-zero layer stays zero. TicketlabError when ``mask`` names a tensor
    ``state`` lacks or has another shape."""
    _check_rescale_mask(state, mask, "variance_matched")
    out = {}
    for name, t in state.items():
        if name not in mask:
            out[name] = t.clone()
            continue
        kept = t * mask[name].to(t.device, t.dtype)
        n = int(mask[name].sum())
        square = float(kept.double().pow(2).sum()) / n if n else 0.0
        if t.dim() > 1 and square > 0:
            kept = kept * (sigma_w2 / ((n / t.numel()) * t[0].numel() * square)) ** 0.5
        out[name] = kept
    return out


def redraw(model: nn.Module, seed: int) -> list[str]:
    """Re-draw every parameter of ``model`` in place, as its modules initialise themselves, deterministically from
    ``seed`` (the caller's random state is left as it was). Returns the names of the parameters nothing re-drew.

    Each module's own ``reset_parameters`` runs, parents before children (the order of ``model.modules()``); then
    each ``_reset_parameters`` of a module without the former (``MultiheadAttention``, ``Transformer``), children
    before parents, as their constructors run it after building their children. A parametrised tensor
    (``torch.nn.utils.parametrize``) is drawn on a plain copy of its module and assigned, through the
    parametrisation's ``right_inverse``. Not re-drawn: a parameter of a module with neither method (a raw
    ``nn.Parameter`` used through ``F.linear``), one whose parametrisation cannot be assigned, and one a reset left
    exactly as it was though it was not constant.
    """
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    drawn: set[int] = set()  # ids of the parameters a module's reset re-drew
    modules = list(model.modules())
    # fork every RNG manual_seed touches (CUDA too), so the caller's random state is left as it was
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in modules:
            if hasattr(m, "reset_parameters"):
                _reset(m, "reset_parameters", drawn)
        for m in reversed(modules):
            if not hasattr(m, "reset_parameters") and hasattr(m, "_reset_parameters"):
                _reset(m, "_reset_parameters", drawn)
    return [
        n
        for n, p in model.named_parameters()
        if id(p) not in drawn or (torch.equal(p, before[n]) and not _constant(before[n]))
    ]


def _reset(module: nn.Module, method: str, drawn: set[int]) -> None:
    """Run ``module``'s own reset; a parametrised one's on a plain twin, assigned back through its parametrisations."""
    if not parametrize.is_parametrized(module):
        getattr(module, method)()
        drawn.update(id(p) for p in module.parameters(recurse=False))
        return
    # The twin is the module's own class, sharing its other parameters and buffers (so those are re-drawn in
    # place), with each parametrised tensor as a plain parameter. (remove_parametrizations on a copy would edit the
    # class the copy shares with the module.)
    names = list(module.parametrizations)
    plain = object.__new__(type(module).__bases__[0])
    plain.__dict__.update(module.__dict__)
    plain._modules = {k: v for k, v in module._modules.items() if k != "parametrizations"}
    plain._parameters = {**module._parameters, **{n: nn.Parameter(getattr(module, n).detach().clone()) for n in names}}
    getattr(plain, method)()
    drawn.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for name in names:
            try:
                setattr(module, name, plain._parameters[name].detach())  # through right_inverse, into the originals
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # a parametrisation that cannot be assigned: left as it is, and named
            drawn.update(id(p) for p in module.parametrizations[name].parameters())


def _constant(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is the same (a reset to a constant cannot be told from no reset)."""
    return t.numel() <= 1 or bool((t == t.flatten()[0]).all())


from ticketlab.models import cnn1d, conv, mlp, resnet, sequence, vgg  # noqa: E402,F401 -- registers the factories
