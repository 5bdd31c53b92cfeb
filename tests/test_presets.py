"""Every preset is a valid config whose optimizer, schedule and pruning plan run end to end."""

import pytest

from ticketlab import config as C
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.models import create_model, model_arguments
from ticketlab.presets import DEFAULT_PRESET, PRESETS, preset
from ticketlab.problem import registry_problem

SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "mnist1d": (40,)}
# presets on image and feature data; the sequence presets (token data) are tested in tests/test_sequence_runs.py
VECTOR_PRESETS = sorted(name for name in PRESETS if preset(name)["data"]["dataset"] in SHAPES)


def test_default_preset_is_the_defaults_with_three_replicates():
    # `ticketlab imp` with no flags applies the default preset; the library defaults run one replicate.
    assert C.from_dict(preset(DEFAULT_PRESET)) == C.ExperimentConfig().replace(imp={"replicates": 3})


def test_every_preset_has_a_description_and_unknown_names_are_refused():
    assert all(desc and isinstance(values, dict) for desc, values in PRESETS.values())
    with pytest.raises(TicketlabError, match="unknown preset 'lth-nope'"):
        preset("lth-nope")


@pytest.mark.parametrize("name", VECTOR_PRESETS)
def test_preset_builds_its_model_on_its_dataset(name):
    cfg = C.from_dict(preset(name))
    model = create_model(cfg.model.model, SHAPES[cfg.data.dataset], 10, **cfg.model.kwargs())
    params = dict(model.named_parameters())
    assert all(i in params for i in cfg.prune.ignore), "ignored layers must exist"


@pytest.mark.parametrize("name", VECTOR_PRESETS)
def test_preset_runs_a_short_level_on_synthetic_images(name, tmp_path):
    cfg = C.from_dict(preset(name))
    image = cfg.data.dataset != "mnist1d"
    small = {"width": 0.125} if "width" in model_arguments(cfg.model.model) else {}
    rewind = "1it" if cfg.imp.rewind.value else "0it"
    cfg = cfg.replace(
        data={"dataset": "synthetic-images" if image else "synthetic", "val_size": 0, "augment": cfg.data.augment},
        model=small,
        train={"steps": "3it", "eval_every": "3it", "batch_size": 50},
        imp={"levels": 1, "rewind": rewind, "replicates": 1, "baselines": ("random_prune",)},
    )
    data = load_dataset(cfg.data.dataset, augment=cfg.data.augment)
    rows = run_imp(cfg, registry_problem(cfg, data), tmp_path).rows()
    assert [(r["level"], r["branch"]) for r in rows] == [(0, "ticket"), (1, "ticket"), (1, "random_prune")]
    assert rows[1]["density"] < 1.0
