"""Experiment configuration: nested frozen dataclasses, the single source of CLI flags and config files.

Every field carries a help string; ``hash=False`` marks fields that do not change what a run computes
(how many levels or replicates to run, which baselines), so extending a run reuses its directory.
Steps are :class:`ticketlab.steps.Step` values, parsed at the boundary and written back as text (``"500it"``).
How a field is declared, checked and read from text lives in :mod:`ticketlab.config_fields`.
Torch-free: names resolved by registries (models, datasets, criteria) are checked where those registries live.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ticketlab.config_fields import (
    check_finite,
    check_fraction,
    coerce,
    option,
    parse_bool,
    parse_step,
    require,
    set_steps,
    short_repr,
)
from ticketlab.config_fields import merge as merge  # offered here too, as C.merge
from ticketlab.errors import TicketlabError
from ticketlab.steps import Step


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("mnist1d", "dataset name (see `ticketlab datasets`)")
    data_dir: str = option(
        "",
        "directory holding the dataset files (IDX for mnist / fashion-mnist); empty: "
        "$TICKETLAB_DATA_DIR, then the dataset's usual place",
        hash=False,
    )
    val_size: int = option(0, "examples held out of the training set for validation / early stopping (paper: 5000)")
    augment: bool = option(
        False, "random crop (4-pixel padding) and horizontal flip of training images, on the device", since=2
    )
    classes: tuple[int, ...] = option(
        (), "keep only these classes, relabelled 0, 1, ... in this order, e.g. 5,6,7,8,9; empty: all", since=2
    )

    modulus: int = option(97, "modular: the modulus p of (a op b) mod p (prime for /)", since=2)
    operation: str = option("+", "modular: the operation", choices=("+", "-", "*", "/"), since=2)
    train_fraction: float = option(0.3, "modular: the share of all (a, b) pairs used for training", since=2)
    context: int = option(64, "text-char: characters per training window", since=2)
    corpus: str = option(
        "fortunes",
        "text-char: fortunes (Debian's offline package), tiny-shakespeare (downloaded), or a text file",
        since=2,
    )
    label_noise: float = option(0.0, "share of training labels moved to another class (He et al. 2022)", since=2)

    def __post_init__(self) -> None:
        require(self.val_size >= 0, "val_size", ">= 0", self.val_size)
        require(self.modulus >= 2, "modulus", ">= 2", self.modulus)
        if self.operation == "/":
            prime = self.modulus >= 3 and all(self.modulus % k for k in range(2, math.isqrt(self.modulus) + 1))
            require(prime, "modulus", "a prime >= 3 for --operation / (division needs inverses)", self.modulus)
        check_finite(train_fraction=self.train_fraction)
        require(0.0 < self.train_fraction < 1.0, "train_fraction", "in (0, 1)", self.train_fraction)
        require(self.context >= 1, "context", ">= 1", self.context)
        require(bool(self.corpus), "corpus", "fortunes, tiny-shakespeare or a text file's path", self.corpus)
        check_finite(label_noise=self.label_noise)
        require(0.0 <= self.label_noise < 1.0, "label_noise", "in [0, 1)", self.label_noise)


@dataclass(frozen=True)
class ModelConfig:
    model: str = option("mlp", "model name (see `ticketlab models`)")
    widths: tuple[int, ...] = option((), "hidden widths for MLP models, e.g. 300,100; empty: the model's own")
    width: float = option(
        1.0, "width multiplier for conv models: every layer's channels (and FC sizes) times this", since=2
    )
    norm: str = option(
        "",
        "normalisation after each conv; empty: the model's own (BatchNorm for VGG/ResNet, none for Conv-N/LeNet-5)",
        choices=("", "batch", "group", "layer", "none", "rms"),
        since=2,
    )
    dropout: float = option(0.0, "dropout on the hidden fully connected layers (Conv-2/4/6)", since=2)
    args: tuple[str, ...] = option(
        (), "more model-factory arguments as key=value, e.g. d_model=64,layers=1 (see `ticketlab models`)", since=2
    )
    init: str = option(
        "glorot_normal",
        "weight initialisation",
        choices=("glorot_normal", "kaiming_normal", "kaiming_uniform", "default"),
    )

    def __post_init__(self) -> None:
        require(all(w >= 1 for w in self.widths), "widths", "positive layer sizes", self.widths)
        check_finite(width=self.width, dropout=self.dropout)
        require(self.width > 0, "width", "> 0", self.width)
        require(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)
        self.factory_args()  # a malformed entry is refused here, not when the model is built

    def factory_args(self) -> dict[str, Any]:
        """``args`` as a mapping; each value read as an int, else a float, else true/false, else kept as text."""
        out: dict[str, Any] = {}
        for item in self.args:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip().isidentifier() or not text.strip():
                raise TicketlabError(f"model.args: cannot read {short_repr(item)}; write KEY=VALUE, e.g. d_model=64")
            out[key.strip()] = _arg_value(text.strip())
        return out

    def kwargs(self) -> dict[str, Any]:
        """The model-factory arguments this config sets (the ones left at their defaults are not passed), ``args``
        last."""
        names = ("widths", "width", "norm", "dropout")
        return {
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name in names and getattr(self, f.name) != f.default
            },
            **self.factory_args(),
        }


def _arg_value(text: str) -> Any:
    """A ``--args`` value: int, else float, else a bool spelled true/false, else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = option("adam", "optimizer (adamw: decoupled weight decay)", choices=("adam", "sgd", "adamw"))
    lr: float = option(2e-2, "peak learning rate")
    momentum: float = option(0.0, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    weight_decay: float = option(0.0, "L2 weight decay")
    batch_size: int = option(100, "examples per iteration")
    steps: Step = option(Step(1500, "it"), "training length per level, e.g. 50000it or 40ep")
    schedule: str = option("constant", "learning-rate schedule", choices=("constant", "step", "cosine"))
    milestones: tuple[Step, ...] = option((), "step schedule: where the LR is multiplied by gamma, e.g. 80ep,120ep")
    gamma: float = option(0.1, "step schedule: LR factor at each milestone")
    warmup: Step = option(Step(0, "it"), "linear LR warmup length from 0, e.g. 10000it")
    eval_every: Step = option(Step(100, "it"), "evaluate on validation and test every this often")
    precision: str = option(
        "fp32", "bf16: autocast matmuls and convs to bfloat16 (fast on recent GPUs)", choices=("fp32", "bf16"), since=2
    )
    channels_last: bool = option(
        False, "image batches and conv weights in channels-last layout (faster convs on GPUs, and on CPUs)", since=2
    )
    slimming: float = option(
        0.0,
        "network slimming (Liu et al. 2017): L1 penalty on BatchNorm scale factors, e.g. 1e-4; pair with --units bn",
        since=2,
    )

    def __post_init__(self) -> None:
        set_steps(self, "steps", "warmup", "eval_every")
        object.__setattr__(self, "milestones", tuple(parse_step("milestones", m) for m in self.milestones))
        check_finite(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, gamma=self.gamma)
        require(self.lr > 0, "lr", "> 0", self.lr)
        require(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        require(0.0 <= self.momentum < 1.0, "momentum", "in [0, 1)", self.momentum)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise TicketlabError("nesterov needs --optimizer sgd and a --momentum above 0")
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        if self.eval_every.value == 0:
            raise TicketlabError("eval_every must be at least 1it")
        check_finite(slimming=self.slimming)
        require(self.slimming >= 0, "slimming", ">= 0", self.slimming)


@dataclass(frozen=True)
class PruneConfig:
    strategy: str = option(
        "layerwise",
        "layerwise: each layer loses its own fraction; global: one threshold; erk: layer densities by the "
        "Erdos-Renyi-Kernel rule (Evci et al. 2020)",
        choices=("layerwise", "global", "erk"),
    )
    fraction: float = option(0.25, "fraction of the remaining prunable weights removed per level")
    criterion: str = option(
        "large_final",
        "which weights to keep: after training, from the level's start (theta_k) and end weights (Zhou et al. "
        "2019; large_final is magnitude pruning), or snip / grasp / synflow, scored on the network",
        since=2,
    )
    rounds: int = option(
        0,
        "prune-and-rescore rounds per pruning step, on an exponential schedule; 0: the criterion's own "
        "(synflow 100, others 1)",
        since=2,
    )
    score_batches: int = option(1, "training batches snip and grasp read to score the weights", since=2)
    conv_fraction: float | None = option(
        None,
        "conv layers' own fraction per level (paper's Conv-2/4/6: 0.1 or 0.15); unset: same as --fraction",
        since=2,
    )
    output_fraction: float | None = option(
        None, "the output layer's own fraction per level (paper: 0.1); unset: same as --fraction"
    )
    layer_fractions: tuple[str, ...] = option(
        (), "per-layer fractions per level, e.g. fc.0.weight=0.1,fc.2.weight=0 (0 keeps a layer dense)", since=2
    )
    keep_dense: tuple[str, ...] = option(
        (), "layers never pruned but counted in the density: first, last", choices=("first", "last"), since=2
    )
    on_collapse: str = option(
        "warn",
        "when a mask leaves a layer empty or cuts every path from input to output: warn, or refuse (stop)",
        hash=False,
        choices=("warn", "refuse"),
        since=2,
    )
    units: str = option(
        "none",
        "structured pruning: remove whole neurons / conv filters instead of weights, scored by the L1 or L2 norm "
        "of their weights or by their BatchNorm scale (bn, network slimming); none: prune weights",
        choices=("none", "l1", "l2", "bn"),
        since=2,
    )
    ignore: tuple[str, ...] = option((), "parameter names (or module-name prefixes) never pruned, e.g. fc.0.weight")
    prune_biases: bool = option(False, "also prune biases of linear/conv layers")
    prunable: tuple[str, ...] = option((), "more parameters to prune, by name pattern (fnmatch): *.kernel", since=2)
    prune_embeddings: bool = option(
        False, "also prune Embedding / EmbeddingBag tables (off: they are token lookups, not layers)", since=2
    )
    ladder: str = option(
        "exact",
        "iterative counts: exact keeps round(n * (1 - fraction)^level) of a layer's n weights at each level; "
        "per-level rounds each level's cut (as runs made before 0.2 did; it stalls on tiny layers)",
        choices=("exact", "per-level"),
        since=2,
    )

    def __post_init__(self) -> None:
        check_fraction("fraction", self.fraction)
        check_fraction("conv_fraction", self.conv_fraction)
        check_fraction("output_fraction", self.output_fraction)
        self.overrides()
        require(self.rounds >= 0, "rounds", ">= 0 (0: the criterion's own)", self.rounds)
        require(self.score_batches >= 1, "score_batches", ">= 1", self.score_batches)
        if self.units != "none" and self.strategy == "erk":
            raise TicketlabError("structured pruning (--units) prunes neurons layerwise or globally, not by ERK")
        if self.units in ("l1", "l2") and self.strategy == "global":
            raise TicketlabError(
                f"--units {self.units} is layerwise (Li et al. 2016): weight norms grow with a layer's fan-in, so one "
                "threshold over layers would empty the small ones; use --strategy layerwise, or --units bn"
            )
        if self.units != "none" and self.criterion != "large_final":
            raise TicketlabError(f"--units {self.units} scores whole neurons itself; leave --criterion at large_final")

    def overrides(self) -> dict[str, float]:
        """``layer_fractions`` as a mapping from parameter name to its fraction per level."""
        out: dict[str, float] = {}
        for item in self.layer_fractions:
            name, sep, value = item.partition("=")
            try:
                fraction = float(value)
            except ValueError:
                fraction = math.nan
            if not sep or not name or not 0.0 <= fraction <= 1.0:
                raise TicketlabError(
                    f"layer_fractions: cannot read {short_repr(item)}; write NAME=FRACTION with a fraction in [0, 1], "
                    "e.g. fc.0.weight=0.1"
                )
            out[name.strip()] = fraction
        return out


MODES = ("iterative", "one-shot", "at-init")
# Before imp.mode, two booleans said the same; old config files and run directories still hold them.
LEGACY_MODE_KEYS = {"one_shot": "one-shot", "at_init": "at-init"}


@dataclass(frozen=True)
class ImpConfig:
    levels: int = option(11, "pruning levels after the dense level 0", hash=False)
    rewind: Step = option(Step(0, "it"), "rewind point: 0it is the original LTH; e.g. 500it or 2ep for late rewinding")
    mode: str = option(
        "iterative",
        "iterative: prune each level's trained ticket; one-shot: prune each level straight from the dense "
        "network's trained weights; at-init: score the network at the rewind point, before any training, and "
        "prune each level straight from it (SNIP, GraSP, SynFlow, magnitude at init)",
        choices=MODES,
    )
    target_density: float | None = option(
        None, "one-shot or at-init only: prune once, straight to this overall density (overrides --levels)"
    )
    baselines: tuple[str, ...] = option(
        ("reinit", "random_prune"),
        "baselines trained at every level",
        hash=False,
        choices=("reinit", "random_prune"),
    )
    replicates: int = option(1, "independent replicates (seeds); results report mean and std", hash=False)
    seed: int = option(0, "base random seed")

    def __post_init__(self) -> None:
        set_steps(self, "rewind")
        require(self.mode in MODES, "mode", f"one of {', '.join(MODES)}", self.mode)
        if len(set(self.baselines)) != len(self.baselines):
            raise TicketlabError(f"baselines names one twice: {short_repr(self.baselines)}")
        check_fraction("target_density", self.target_density)
        if self.target_density is not None and not self.prunes_from_dense:
            raise TicketlabError("target_density needs --one-shot or --at-init (--mode one-shot or at-init)")
        require(self.levels >= 0, "levels", ">= 0", self.levels)
        require(self.replicates >= 1, "replicates", ">= 1", self.replicates)

    @property
    def prunes_from_dense(self) -> bool:
        """Whether each level prunes the dense network (one-shot, at init) rather than the previous level's ticket."""
        return self.mode != "iterative"


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    imp: ImpConfig = field(default_factory=ImpConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain values by section (steps as text), as config files and ``config.json`` hold them."""
        return {s.name: as_dict(getattr(self, s.name)) for s in dataclasses.fields(self)}

    def run_hash(self) -> str:
        """A short hash of every field that changes what a run computes."""
        kept: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            obj, plain = getattr(self, section), as_dict(getattr(self, section))
            kept[section] = {
                f.name: plain[f.name]
                for f in fields_of(section)
                if f.metadata["hash"]
                and f.name != "mode"
                and (f.metadata["since"] == 1 or getattr(obj, f.name) != f.default)
            }
        # imp.mode is hashed as the two booleans it replaced (one_shot since version 1, at_init since 2), so
        # every run keeps the directory it had before.
        kept["imp"]["one_shot"] = self.imp.mode == "one-shot"
        # The exact ladder changed iterative runs' counts: hashed there, and per-level (the old way) is not.
        kept["prune"].pop("ladder", None)
        if self.imp.mode == "iterative" and self.prune.ladder == "exact":
            kept["prune"]["ladder"] = "exact"
        if self.imp.mode == "at-init":
            kept["imp"]["at_init"] = True
        blob = json.dumps(kept, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def replace(self, **sections: dict[str, Any]) -> ExperimentConfig:
        """A copy with some fields changed: ``cfg.replace(train={"lr": 0.1})``."""
        merged = self.to_dict()
        for section, values in sections.items():
            merged[section].update(values)
        return from_dict(merged)


SECTIONS = ("data", "model", "train", "prune", "imp")
_SECTION_TYPES = dict(zip(SECTIONS, (DataConfig, ModelConfig, TrainConfig, PruneConfig, ImpConfig)))


def as_dict(section: Any) -> dict[str, Any]:
    """One section's fields as plain values: steps as text (``"500it"``), tuples kept."""

    def plain(value: Any) -> Any:
        if isinstance(value, Step):
            return str(value)
        return tuple(map(plain, value)) if isinstance(value, tuple) else value

    return {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}


def fields_of(section: str) -> tuple[dataclasses.Field, ...]:
    """The fields of a section (``"train"``), in order."""
    return dataclasses.fields(_SECTION_TYPES[section])


def field_type(section: str, name: str) -> Any:
    """The type of one field, e.g. ``float | None``."""
    return typing.get_type_hints(_SECTION_TYPES[section])[name]


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A config mapping with old keys in today's form: ``imp.one_shot`` / ``imp.at_init`` become ``imp.mode``
    (old config files and run directories hold them). Anything else is left for :func:`from_dict` to judge."""
    if not isinstance(d, dict) or not isinstance(d.get("imp"), dict):
        return d
    values = dict(d["imp"])
    try:
        given = {LEGACY_MODE_KEYS[k]: parse_bool(values.pop(k)) for k in LEGACY_MODE_KEYS if k in values}
    except ValueError:
        raise TicketlabError("imp.one_shot and imp.at_init must be true or false (or give imp.mode)") from None
    chosen = [mode for mode, on in given.items() if on]
    if values.get("mode") in [mode for mode, on in given.items() if not on]:
        raise TicketlabError(f"imp.mode {values['mode']} contradicts an old-style key set to false; drop that key")
    if len(chosen) > 1:
        raise TicketlabError("choose one of --one-shot (prune the trained network) and --at-init (before training)")
    if chosen:
        if values.get("mode", "iterative") not in ("iterative", chosen[0]):
            raise TicketlabError(f"imp.mode {short_repr(values['mode'])} contradicts the old-style {chosen[0]} key")
        values["mode"] = chosen[0]
    return {**d, "imp": values}


def from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Build a validated config from a nested mapping (unknown keys are an error)."""
    if not isinstance(d, dict):
        raise TicketlabError("a config must be a mapping of sections (data, model, train, prune, imp)")
    d = upgrade(d)
    unknown = set(map(str, d)) - set(SECTIONS)
    if unknown:
        raise TicketlabError(f"unknown config section(s) {short_repr(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    built = {}
    for section in SECTIONS:
        values = d.get(section) or {}
        if not isinstance(values, dict):
            raise TicketlabError(f"config section {section!r} must be a mapping")
        names = {f.name: f for f in fields_of(section)}
        bad = set(map(str, values)) - set(names)
        if bad:
            raise TicketlabError(
                f"unknown key(s) {short_repr(sorted(bad))} in section {section!r}; known: {', '.join(names)}"
            )
        kwargs = {}
        for name, value in values.items():
            value = coerce(field_type(section, name), f"{section}.{name}", value)
            choices = names[name].metadata["choices"]
            items = value if isinstance(value, tuple) else (value,)
            if choices and any(v not in choices for v in items):
                raise TicketlabError(f"{section}.{name}: {short_repr(value)} is not one of {', '.join(choices)}")
            kwargs[name] = value
        built[section] = _SECTION_TYPES[section](**kwargs)
    return ExperimentConfig(**built)
