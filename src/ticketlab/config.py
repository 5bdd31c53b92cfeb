"""Experiment configuration: nested frozen dataclasses, the single source of CLI flags and config files.

Every field carries a help string; ``hash=False`` marks fields that do not change what a run computes
(how many levels or replicates to run, which baselines), so extending a run reuses its directory.
Steps stay strings here (``"500it"``) and are parsed by :class:`ticketlab.steps.Step` where used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.steps import Step


def _f(default: Any, help: str, *, hash: bool = True, choices: tuple | None = None, since: int = 1) -> Any:
    """A config field. ``since``: the config version that added it; fields added after version 1 enter the
    run hash only when set away from their default, so a run made before they existed keeps its directory."""
    meta = {"help": help, "hash": hash, "choices": choices, "since": since}
    return field(default=default, metadata=meta)


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise TicketlabError(f"{name} must be a finite number, got {value}")


def _check_fraction(name: str, value: float | None) -> None:
    if value is not None and not (0.0 < value <= 1.0):
        raise TicketlabError(f"{name} must be in (0, 1], got {value}")


# ticketlab.scores.AFTER_TRAINING and WITH_MODEL hold these (a test keeps them in step; config stays free of torch)
CRITERIA = (
    "large_final",
    "small_final",
    "large_init",
    "small_init",
    "large_init_large_final",
    "small_init_small_final",
    "magnitude_increase",
    "movement",
    "large_final_same_sign",
    "large_final_diff_sign",
    "random",
    "snip",
    "grasp",
    "synflow",
)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("mnist1d", "dataset name (see `ticketlab datasets`)")
    data_dir: str = _f(
        "",
        "directory holding the dataset files (IDX for mnist / fashion-mnist); empty: "
        "$TICKETLAB_DATA_DIR, then the dataset's usual place",
        hash=False,
    )
    val_size: int = _f(0, "examples held out of the training set for validation / early stopping (paper: 5000)")
    augment: bool = _f(
        False, "random crop (4-pixel padding) and horizontal flip of training images, on the device", since=2
    )
    classes: tuple[int, ...] = _f(
        (), "keep only these classes, relabelled 0, 1, ... in this order, e.g. 5,6,7,8,9; empty: all", since=2
    )

    def __post_init__(self) -> None:
        if self.val_size < 0:
            raise TicketlabError(f"val_size must be >= 0, got {self.val_size}")


@dataclass(frozen=True)
class ModelConfig:
    model: str = _f("mlp", "model name (see `ticketlab models`)")
    widths: tuple[int, ...] = _f((), "hidden widths for MLP models, e.g. 300,100; empty: the model's own")
    width: float = _f(
        1.0, "width multiplier for conv models: every layer's channels (and FC sizes) times this", since=2
    )
    norm: str = _f(
        "",
        "normalisation after each conv; empty: the model's own (BatchNorm for VGG/ResNet, none for Conv-N/LeNet-5)",
        choices=("", "batch", "group", "layer", "none"),
        since=2,
    )
    dropout: float = _f(0.0, "dropout on the hidden fully connected layers (Conv-2/4/6)", since=2)
    init: str = _f(
        "glorot_normal",
        "weight initialisation",
        choices=("glorot_normal", "kaiming_normal", "kaiming_uniform", "default"),
    )

    def __post_init__(self) -> None:
        if any(w < 1 for w in self.widths):
            raise TicketlabError(f"widths must be positive layer sizes, got {','.join(map(str, self.widths))}")
        _check_finite(width=self.width, dropout=self.dropout)
        if self.width <= 0:
            raise TicketlabError(f"width must be > 0, got {self.width}")
        if not 0 <= self.dropout < 1:
            raise TicketlabError(f"dropout must be in [0, 1), got {self.dropout}")

    def kwargs(self) -> dict[str, Any]:
        """The model-factory arguments this config sets (the ones left at their defaults are not passed)."""
        out: dict[str, Any] = {}
        if self.widths:
            out["widths"] = self.widths
        if self.width != 1.0:
            out["width"] = self.width
        if self.norm:
            out["norm"] = self.norm
        if self.dropout:
            out["dropout"] = self.dropout
        return out


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = _f("adam", "optimizer", choices=("adam", "sgd"))
    lr: float = _f(2e-2, "peak learning rate")
    momentum: float = _f(0.0, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum (SGD)")
    weight_decay: float = _f(0.0, "L2 weight decay")
    batch_size: int = _f(100, "examples per iteration")
    steps: str = _f("1500it", "training length per level, e.g. 50000it or 40ep")
    schedule: str = _f("constant", "learning-rate schedule", choices=("constant", "step", "cosine"))
    milestones: tuple[str, ...] = _f((), "step schedule: where the LR is multiplied by gamma, e.g. 80ep,120ep")
    gamma: float = _f(0.1, "step schedule: LR factor at each milestone")
    warmup: str = _f("0it", "linear LR warmup length from 0, e.g. 10000it")
    eval_every: str = _f("100it", "evaluate on validation and test every this often")
    precision: str = _f(
        "fp32", "bf16: autocast matmuls and convs to bfloat16 (fast on recent GPUs)", choices=("fp32", "bf16"), since=2
    )
    channels_last: bool = _f(
        False, "image batches and conv weights in channels-last layout (faster convs on GPUs, and on CPUs)", since=2
    )
    slimming: float = _f(
        0.0,
        "network slimming (Liu et al. 2017): L1 penalty on BatchNorm scale factors, e.g. 1e-4; pair with --units bn",
        since=2,
    )

    def __post_init__(self) -> None:
        for name in ("steps", "warmup", "eval_every", *()):
            Step.parse(getattr(self, name))
        for m in self.milestones:
            Step.parse(m)
        _check_finite(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, gamma=self.gamma)
        if self.lr <= 0:
            raise TicketlabError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise TicketlabError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise TicketlabError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise TicketlabError("nesterov needs --optimizer sgd and a --momentum above 0")
        if self.weight_decay < 0:
            raise TicketlabError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if Step.parse(self.eval_every).value == 0:
            raise TicketlabError("eval_every must be at least 1it")
        _check_finite(slimming=self.slimming)
        if self.slimming < 0:
            raise TicketlabError(f"slimming must be >= 0, got {self.slimming}")


@dataclass(frozen=True)
class PruneConfig:
    strategy: str = _f(
        "layerwise",
        "layerwise: each layer loses its own fraction; global: one threshold; erk: layer densities by the "
        "Erdos-Renyi-Kernel rule (Evci et al. 2020)",
        choices=("layerwise", "global", "erk"),
    )
    fraction: float = _f(0.25, "fraction of the remaining prunable weights removed per level")
    criterion: str = _f(
        "large_final",
        "which weights to keep: after training, from the level's start (theta_k) and end weights (Zhou et al. "
        "2019; large_final is magnitude pruning), or snip / grasp / synflow, scored on the network",
        choices=CRITERIA,
        since=2,
    )
    rounds: int = _f(
        0,
        "prune-and-rescore rounds per pruning step, on an exponential schedule; 0: the criterion's own "
        "(synflow 100, others 1)",
        since=2,
    )
    score_batches: int = _f(1, "training batches snip and grasp read to score the weights", since=2)
    conv_fraction: float | None = _f(
        None,
        "conv layers' own fraction per level (paper's Conv-2/4/6: 0.1 or 0.15); unset: same as --fraction",
        since=2,
    )
    output_fraction: float | None = _f(
        None, "the output layer's own fraction per level (paper: 0.1); unset: same as --fraction"
    )
    layer_fractions: tuple[str, ...] = _f(
        (), "per-layer fractions per level, e.g. fc.0.weight=0.1,fc.2.weight=0 (0 keeps a layer dense)", since=2
    )
    keep_dense: tuple[str, ...] = _f(
        (), "layers never pruned but counted in the density: first, last", choices=("first", "last"), since=2
    )
    on_collapse: str = _f(
        "warn",
        "when a mask leaves a layer empty or cuts every path from input to output: warn, or refuse (stop)",
        hash=False,
        choices=("warn", "refuse"),
        since=2,
    )
    units: str = _f(
        "none",
        "structured pruning: remove whole neurons / conv filters instead of weights, scored by the L1 or L2 norm "
        "of their weights or by their BatchNorm scale (bn, network slimming); none: prune weights",
        choices=("none", "l1", "l2", "bn"),
        since=2,
    )
    ignore: tuple[str, ...] = _f((), "parameter names (or module-name prefixes) never pruned, e.g. fc.0.weight")
    prune_biases: bool = _f(False, "also prune biases of linear/conv layers")

    def __post_init__(self) -> None:
        _check_fraction("fraction", self.fraction)
        _check_fraction("conv_fraction", self.conv_fraction)
        _check_fraction("output_fraction", self.output_fraction)
        self.overrides()
        if self.rounds < 0:
            raise TicketlabError(f"rounds must be >= 0 (0: the criterion's own), got {self.rounds}")
        if self.score_batches < 1:
            raise TicketlabError(f"score_batches must be >= 1, got {self.score_batches}")
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
                    f"layer_fractions: cannot read {item!r}; write NAME=FRACTION with a fraction in [0, 1], "
                    "e.g. fc.0.weight=0.1"
                )
            out[name.strip()] = fraction
        return out


@dataclass(frozen=True)
class ImpConfig:
    levels: int = _f(11, "pruning levels after the dense level 0", hash=False)
    rewind: str = _f("0it", "rewind point: 0it is the original LTH; e.g. 500it or 2ep for late rewinding")
    one_shot: bool = _f(
        False, "prune each level straight from the dense network's trained weights instead of iteratively"
    )
    at_init: bool = _f(
        False,
        "pruning at initialisation: score the network at the rewind point, before any training, and prune each "
        "level straight from it (SNIP, GraSP, SynFlow, magnitude at init)",
        since=2,
    )
    target_density: float | None = _f(
        None, "one-shot or at-init only: prune once, straight to this overall density (overrides --levels)"
    )
    baselines: tuple[str, ...] = _f(
        ("reinit", "random_prune"),
        "baselines trained at every level",
        hash=False,
        choices=("reinit", "random_prune"),
    )
    replicates: int = _f(1, "independent replicates (seeds); results report mean and std", hash=False)
    seed: int = _f(0, "base random seed")

    def __post_init__(self) -> None:
        Step.parse(self.rewind)
        if len(set(self.baselines)) != len(self.baselines):
            raise TicketlabError(f"baselines names one twice: {','.join(self.baselines)}")
        _check_fraction("target_density", self.target_density)
        if self.target_density is not None and not (self.one_shot or self.at_init):
            raise TicketlabError("target_density needs --one-shot or --at-init")
        if self.one_shot and self.at_init:
            raise TicketlabError("choose one of --one-shot (prune the trained network) and --at-init (before training)")
        if self.levels < 0:
            raise TicketlabError(f"levels must be >= 0, got {self.levels}")
        if self.replicates < 1:
            raise TicketlabError(f"replicates must be >= 1, got {self.replicates}")


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    imp: ImpConfig = field(default_factory=ImpConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s.name: dataclasses.asdict(getattr(self, s.name)) for s in dataclasses.fields(self)}

    def run_hash(self) -> str:
        """A short hash of every field that changes what a run computes."""
        kept = {
            section: {
                f.name: getattr(getattr(self, section), f.name)
                for f in fields_of(section)
                if f.metadata["hash"]
                and (f.metadata["since"] == 1 or getattr(getattr(self, section), f.name) != f.default)
            }
            for section in SECTIONS
        }
        blob = json.dumps(kept, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def replace(self, **sections: dict[str, Any]) -> ExperimentConfig:
        """A copy with some fields changed: ``cfg.replace(train={"lr": 0.1})``."""
        merged = self.to_dict()
        for section, values in sections.items():
            merged[section].update(values)
        return from_dict(merged)


SECTIONS = ("data", "model", "train", "prune", "imp")
_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "prune": PruneConfig,
    "imp": ImpConfig,
}


def fields_of(section: str) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(_SECTION_TYPES[section])


def field_type(section: str, name: str) -> Any:
    return typing.get_type_hints(_SECTION_TYPES[section])[name]


def _coerce(section: str, name: str, value: Any) -> Any:
    """Turn a value from JSON/YAML/CLI text into the field's type, or raise a clear error."""
    tp = field_type(section, name)
    where = f"{section}.{name}"
    optional = isinstance(tp, types.UnionType) and type(None) in tp.__args__
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        tp = next(a for a in tp.__args__ if a is not type(None))
    try:
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            if isinstance(value, str):
                value = [v for v in (p.strip() for p in value.split(",")) if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return tuple(inner(v) for v in value)
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1"):
                    return True
                if value.lower() in ("false", "no", "0"):
                    return False
                raise ValueError
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError
        return tp(value)
    except (TypeError, ValueError):
        raise TicketlabError(f"{where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None


def from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Build a validated config from a nested mapping (unknown keys are an error)."""
    if not isinstance(d, dict):
        raise TicketlabError("a config must be a mapping of sections (data, model, train, prune, imp)")
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise TicketlabError(f"unknown config section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    built = {}
    for section in SECTIONS:
        values = d.get(section) or {}
        if not isinstance(values, dict):
            raise TicketlabError(f"config section {section!r} must be a mapping")
        names = {f.name: f for f in fields_of(section)}
        bad = set(values) - set(names)
        if bad:
            raise TicketlabError(f"unknown key(s) {sorted(bad)} in section {section!r}; known: {', '.join(names)}")
        kwargs = {}
        for name, value in values.items():
            value = _coerce(section, name, value)
            choices = names[name].metadata["choices"]
            items = value if isinstance(value, tuple) else (value,)
            if choices and any(v not in choices for v in items):
                raise TicketlabError(f"{section}.{name}: {value!r} is not one of {', '.join(choices)}")
            kwargs[name] = value
        built[section] = _SECTION_TYPES[section](**kwargs)
    return ExperimentConfig(**built)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TicketlabError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 -- any parse failure is the user's file
        raise TicketlabError(f"cannot parse config file {path}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TicketlabError(f"config file {path} must hold a mapping of sections (data, model, train, ...)")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Section-wise merge of two nested config mappings (override wins)."""
    out = {s: dict(base.get(s) or {}) for s in set(base) | set(override)}
    for section, values in override.items():
        if not isinstance(values, dict):
            raise TicketlabError(f"config section {section!r} must be a mapping")
        out[section].update(values)
    return out


# Named configs. Each is a partial mapping merged over the defaults; any field stays overridable.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "mnist1d-lth": (
        "the default: MNIST-1D, MLP 40-100-100-10, Adam 2e-2, batch 100, 1500 it, 25%/level to 4.2%, 3 replicates",
        {
            "data": {"dataset": "mnist1d"},
            "model": {"model": "mlp", "init": "glorot_normal"},
            "train": {"optimizer": "adam", "lr": 2e-2, "batch_size": 100, "steps": "1500it"},
            "prune": {"strategy": "layerwise", "fraction": 0.25},
            "imp": {"levels": 11, "replicates": 3},
        },
    ),
    "lth-lenet300": (
        "LTH paper LeNet-300-100 on MNIST: Adam 1.2e-3, batch 60, 50K it, layerwise 20/20/10, 5K val",
        {
            "data": {"dataset": "mnist", "val_size": 5000},
            "model": {"model": "lenet_300_100", "init": "glorot_normal"},
            "train": {"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60, "steps": "50000it", "eval_every": "100it"},
            "prune": {"strategy": "layerwise", "fraction": 0.2, "output_fraction": 0.1},
            "imp": {"levels": 15, "rewind": "0it"},
        },
    ),
    "openlth-lenet300": (
        "open_lth's LeNet-300-100 on MNIST: SGD 0.1, batch 128, 40 epochs, global 20%, output layer not pruned",
        {
            "data": {"dataset": "mnist"},
            "model": {"model": "lenet_300_100", "init": "kaiming_normal"},
            "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "steps": "40ep"},
            "prune": {"strategy": "global", "fraction": 0.2, "ignore": ("fc.2.weight",)},
            "imp": {"levels": 15},
        },
    ),
}


def _lth_conv(depth: int, steps: str, lr: float, conv_fraction: float) -> tuple[str, dict[str, Any]]:
    """The LTH paper's Conv-2/4/6 on CIFAR-10 (its Figure 2 table)."""
    lr_text, kilo_steps = f"{lr:.0e}".replace("e-0", "e-"), Step.parse(steps).value // 1000
    return (
        f"LTH paper Conv-{depth} on CIFAR-10: Adam {lr_text}, batch 60, {kilo_steps}K it, "
        f"layerwise conv {conv_fraction:.0%} / fc 20% / output 10%, 5K val",
        {
            "data": {"dataset": "cifar10", "val_size": 5000},
            "model": {"model": f"conv_{depth}", "init": "glorot_normal"},
            "train": {"optimizer": "adam", "lr": lr, "batch_size": 60, "steps": steps, "eval_every": "100it"},
            "prune": {"strategy": "layerwise", "fraction": 0.2, "conv_fraction": conv_fraction, "output_fraction": 0.1},
            "imp": {"levels": 20},
        },
    )


PRESETS["lth-conv2"] = _lth_conv(2, "20000it", 2e-4, 0.1)
PRESETS["lth-conv4"] = _lth_conv(4, "25000it", 3e-4, 0.1)
PRESETS["lth-conv6"] = _lth_conv(6, "30000it", 3e-4, 0.15)

# Deep nets: global pruning of the conv layers only (the output layer `fc` is ignored), as in the papers.
_CIFAR_SGD = {
    "data": {"dataset": "cifar10", "augment": True},
    "train": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step", "gamma": 0.1},
    "prune": {"strategy": "global", "fraction": 0.2, "ignore": ("fc.weight",)},
    "imp": {"levels": 20},
}
PRESETS["lth-vgg19"] = (
    "LTH paper VGG-19 on CIFAR-10: SGD 0.1 mom 0.9 wd 1e-4, 10K-it warmup, batch 64, 160 ep (/10 at 80, 120), "
    "global 20% conv only",
    merge(
        _CIFAR_SGD,
        {
            "model": {"model": "vgg19", "init": "glorot_normal"},
            "train": {
                "lr": 0.1,
                "warmup": "10000it",
                "batch_size": 64,
                "steps": "160ep",
                "milestones": ("80ep", "120ep"),
            },
        },
    ),
)
PRESETS["lth-resnet18"] = (
    'LTH paper "ResNet-18" (the CIFAR ResNet-20): SGD 0.03 mom 0.9 wd 1e-4, 20K-it warmup, batch 128, 30K it '
    "(/10 at 20K, 25K), global 20%",
    merge(
        _CIFAR_SGD,
        {
            "model": {"model": "resnet20", "init": "glorot_normal"},
            "train": {
                "lr": 0.03,
                "warmup": "20000it",
                "batch_size": 128,
                "steps": "30000it",
                "milestones": ("20000it", "25000it"),
            },
        },
    ),
)
for _net in ("resnet20", "vgg16"):
    _openlth = merge(
        _CIFAR_SGD,
        {
            "model": {"model": _net, "init": "kaiming_normal"},
            "train": {"lr": 0.1, "batch_size": 128, "steps": "160ep", "milestones": ("80ep", "120ep")},
        },
    )
    _what = "SGD 0.1 mom 0.9 wd 1e-4, batch 128, 160 ep (/10 at 80, 120), global 20% conv only"
    PRESETS[f"openlth-{_net}"] = (f"open_lth's {_net} on CIFAR-10: {_what}, rewound to init", _openlth)
    PRESETS[f"openlth-{_net}-rewind"] = (
        f"as openlth-{_net}, rewound to iteration 500 (late rewinding, Frankle et al. 2020)",
        merge(_openlth, {"imp": {"rewind": "500it"}}),
    )
PRESETS["mnist1d-lth-500"] = (
    "the MNIST-1D paper's LTH MLP 40-500-500-10, otherwise as mnist1d-lth, one replicate (about 2.5 min)",
    merge(PRESETS["mnist1d-lth"][1], {"model": {"model": "mnist1d_mlp"}, "imp": {"replicates": 1}}),
)
PRESETS["renda-mnist1d"] = (
    "Renda et al.'s comparison on MNIST-1D: rewound at 750 of 1500 it (Adam 2e-2, /10 at 750 and 1125 it), "
    "so weight rewinding, `branch finetune` and `branch lr_rewind` all retrain 750 it",
    merge(
        PRESETS["mnist1d-lth"][1],
        {
            "train": {"schedule": "step", "milestones": ("750it", "1125it"), "gamma": 0.1},
            "imp": {"rewind": "750it", "levels": 8},
        },
    ),
)
DEFAULT_PRESET = "mnist1d-lth"


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise TicketlabError(f"unknown preset {name!r}; known: {', '.join(PRESETS)} (`ticketlab presets` lists them)")
    return PRESETS[name][1]
