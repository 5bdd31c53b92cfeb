"""Named configs: each a partial mapping merged over the config defaults, so any field stays overridable.

``ticketlab presets`` lists them; ``--preset NAME`` (or :func:`preset`) starts a run from one.
"""

from __future__ import annotations

from typing import Any

from ticketlab.config import merge
from ticketlab.config_fields import short_repr
from ticketlab.errors import TicketlabError
from ticketlab.steps import Step

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
# Sequence models on token data (issue 16). Each runs here, on two CPU cores, in minutes.
PRESETS["grokking-modadd"] = (
    "grokking on (a + b) mod 31, 70% of pairs for training: 1-layer Transformer (d 64, 4 heads), AdamW 1e-3, "
    "weight decay 1, full batch, 4000 it; for `ticketlab grokking` (global magnitude, embeddings pruned)",
    {
        "data": {"dataset": "modular", "modulus": 31, "operation": "+", "train_fraction": 0.7},
        "model": {"model": "transformer_lm", "init": "default", "args": ("d_model=64", "heads=4", "layers=1")},
        "train": {
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1.0,
            "batch_size": 673,
            "steps": "4000it",
            "eval_every": "100it",
        },
        "prune": {"strategy": "global", "fraction": 0.2, "prune_embeddings": True},
        "imp": {"levels": 4, "replicates": 1},
    },
)
PRESETS["lm-char-transformer"] = (
    "character language model on Debian's fortunes: 2-layer Transformer (d 64, 4 heads), context 64, AdamW 3e-3, "
    "batch 32, 600 it; IMP global 50%/level with embeddings, 4 levels to 6.25%",
    {
        "data": {"dataset": "text-char", "corpus": "fortunes", "context": 64},
        "model": {"model": "transformer_lm", "init": "default", "args": ("d_model=64", "heads=4", "layers=2")},
        "train": {
            "optimizer": "adamw",
            "lr": 3e-3,
            "weight_decay": 0.01,
            "batch_size": 32,
            "steps": "600it",
            "eval_every": "300it",
        },
        "prune": {"strategy": "global", "fraction": 0.5, "prune_embeddings": True},
        "imp": {"levels": 4, "replicates": 1},
    },
)
PRESETS["lm-char-lstm"] = (
    "character language model on Debian's fortunes: 1-layer LSTM (128 units, embedding 32), context 64, Adam 3e-3, "
    "batch 32, 600 it; IMP global 50%/level with embeddings, 4 levels to 6.25%",
    merge(
        PRESETS["lm-char-transformer"][1],
        {
            "model": {"model": "rnn_lm", "args": ("cell=lstm", "hidden=128", "embed=32")},
            "train": {"optimizer": "adam", "weight_decay": 0.0},
        },
    ),
)
PRESETS["norms-conv"] = (
    "for `ticketlab norms`: LeNet-5 at half width on Fashion-MNIST classes 0-4, Adam 1e-3, 1 epoch per level "
    "(same epochs at every batch size), layerwise 50%/level, 3 levels to 12.5%, 2 replicates",
    {
        "data": {"dataset": "fashion-mnist", "classes": (0, 1, 2, 3, 4)},
        "model": {"model": "lenet5", "width": 0.5, "init": "kaiming_normal"},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "steps": "1ep", "eval_every": "1ep"},
        "prune": {"strategy": "layerwise", "fraction": 0.5},
        "imp": {"levels": 3, "replicates": 2},
    },
)
DEFAULT_PRESET = "mnist1d-lth"


def preset(name: str) -> dict[str, Any]:
    """The partial config mapping of preset ``name``."""
    if name not in PRESETS:
        raise TicketlabError(
            f"unknown preset {short_repr(name)}; known: {', '.join(PRESETS)} (`ticketlab presets` lists them)"
        )
    return PRESETS[name][1]
