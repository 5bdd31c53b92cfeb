import json

import pytest

from ticketlab import config as C
from ticketlab.errors import TicketlabError


def test_default_preset_is_the_defaults_with_three_replicates():
    # `ticketlab imp` with no flags applies the default preset; the library defaults run one replicate.
    assert C.from_dict(C.preset(C.DEFAULT_PRESET)) == C.ExperimentConfig().replace(imp={"replicates": 3})


def test_hash_ignores_levels_replicates_and_baselines_but_not_what_changes_results():
    base = C.ExperimentConfig()
    same = base.replace(imp={"levels": 3, "replicates": 5, "baselines": ()})
    assert same.run_hash() == base.run_hash()
    assert base.replace(train={"lr": 0.5}).run_hash() != base.run_hash()
    assert base.replace(imp={"rewind": "10it"}).run_hash() != base.run_hash()


def test_values_from_text_are_coerced_to_field_types():
    cfg = C.from_dict(
        {
            "model": {"widths": "300, 100"},
            "train": {"lr": "0.1", "nesterov": "false"},
            "prune": {"output_fraction": "none"},
            "imp": {"levels": "4"},
        }
    )
    assert cfg.model.widths == (300, 100) and cfg.train.lr == 0.1 and cfg.imp.levels == 4
    assert cfg.prune.output_fraction is None and cfg.train.nesterov is False


@pytest.mark.parametrize(
    "d, message",
    [
        ({"prune": {"fraction": 0}}, r"fraction must be in \(0, 1\]"),
        ({"prune": {"fraction": 1.5}}, r"fraction must be in \(0, 1\]"),
        ({"prune": {"output_fraction": -0.1}}, r"output_fraction must be in \(0, 1\]"),
        ({"imp": {"one_shot": True, "target_density": 0}}, r"target_density must be in \(0, 1\]"),
        ({"imp": {"target_density": 0.1}}, "needs --one-shot"),
        ({"train": {"steps": "10 epochs"}}, "malformed step"),
        ({"train": {"lr": "fast"}}, "cannot read 'fast' as float"),
        ({"train": {"optimizer": "rmsprop"}}, "not one of adam, sgd"),
        ({"train": {"lrr": 0.1}}, r"unknown key\(s\) \['lrr'\]"),
        ({"trian": {}}, "unknown config section"),
        ({"imp": {"levels": 2.5}}, "cannot read 2.5 as int"),
        ({"train": {"nesterov": True}}, "nesterov needs"),
    ],
)
def test_bad_values_are_user_errors_that_say_what_is_wrong(d, message):
    with pytest.raises(TicketlabError, match=message):
        C.from_dict(d)


def test_config_files_yaml_and_json(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr: 0.05\nimp:\n  levels: 2\n")
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"prune": {"strategy": "global"}}))
    assert C.from_dict(C.load_file(y)).train.lr == 0.05
    assert C.from_dict(C.load_file(j)).prune.strategy == "global"


def test_unreadable_or_malformed_config_file(tmp_path):
    with pytest.raises(TicketlabError, match="cannot read config file"):
        C.load_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(TicketlabError, match="cannot parse config file"):
        C.load_file(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(TicketlabError, match="must hold a mapping"):
        C.load_file(listy)


def test_every_preset_is_a_valid_config():
    for name in C.PRESETS:
        C.from_dict(C.preset(name))
    with pytest.raises(TicketlabError, match="unknown preset"):
        C.preset("lth-nope")


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("prune", {"conv_fraction": 0.0}, "conv_fraction must be in"),
        ("model", {"width": 0}, "width must be > 0"),
        ("model", {"dropout": 1.0}, "dropout must be in"),
        ("model", {"norm": "instance"}, "not one of"),
        ("train", {"precision": "fp16"}, "not one of"),
        ("prune", {"layer_fractions": ("fc.0.weight",)}, "write NAME=FRACTION"),
        ("prune", {"layer_fractions": ("fc.0.weight=1.5",)}, "write NAME=FRACTION"),
        ("prune", {"keep_dense": ("middle",)}, "not one of"),
        ("prune", {"rounds": -1}, "rounds must be >= 0"),
        ("prune", {"units": "l1", "strategy": "erk"}, "not by ERK"),
        ("train", {"slimming": -1e-4}, "slimming must be >= 0"),
        ("imp", {"at_init": True, "one_shot": True}, "choose one of"),
    ],
)
def test_model_and_pruning_fields_are_validated(section, values, message):
    with pytest.raises(TicketlabError, match=message):
        C.from_dict({section: values})


def test_model_kwargs_pass_only_what_is_set():
    assert C.ModelConfig().kwargs() == {}
    given = {"width": 0.5, "norm": "group", "dropout": 0.1}
    assert C.ModelConfig(**given).kwargs() == given


def test_run_hash_is_stable_across_versions():
    # The hash of the default experiment as version 1 computed it: adding fields must not move old runs.
    assert C.ExperimentConfig().run_hash() == "23974710c9"
    assert C.ExperimentConfig().replace(model={"width": 0.5}).run_hash() != "23974710c9"
    assert C.ExperimentConfig().replace(train={"channels_last": True}).run_hash() != "23974710c9"


def test_layer_fractions_parse_to_a_mapping():
    cfg = C.from_dict({"prune": {"layer_fractions": "fc.0.weight=0.1, fc.2.weight=0"}})
    assert cfg.prune.overrides() == {"fc.0.weight": 0.1, "fc.2.weight": 0.0}
    assert C.from_dict({"imp": {"at_init": True, "target_density": 0.1}}).imp.target_density == 0.1


# Run hashes computed by the code before steps became typed and imp.mode replaced one_shot / at_init: the
# directories of runs made then must resolve to the same hash (so they resume rather than start again).
GOLDEN_HASHES = {
    "default": ({}, "23974710c9"),
    "one_shot": ({"imp": {"one_shot": True}}, "e55e751539"),
    "one_shot_target": ({"imp": {"one_shot": True, "target_density": 0.1}}, "0cfd6590e4"),
    "at_init": ({"imp": {"at_init": True}}, "267b12e6ee"),
    "at_init_target": ({"imp": {"at_init": True, "target_density": 0.05}}, "f166091f3e"),
    "at_init_snip": ({"imp": {"at_init": True}, "prune": {"criterion": "snip"}}, "8ca7c7d9d6"),
    "rewind_500it": ({"imp": {"rewind": "500it"}}, "e71317a3f7"),
    "rewind_2ep": ({"imp": {"rewind": "2ep"}}, "bd8fdbc821"),
    "milestones": ({"train": {"schedule": "step", "milestones": "750it,1125it"}}, "d948024a88"),
    "warmup": ({"train": {"warmup": "100it"}}, "6a1f22114f"),
    "steps_ep_eval": ({"train": {"steps": "3ep", "eval_every": "1ep"}}, "a0b93e0ac6"),
}
GOLDEN_PRESET_HASHES = {
    "mnist1d-lth": "23974710c9",
    "lth-lenet300": "da6713b6b5",
    "openlth-lenet300": "5ea6fb4825",
    "lth-conv2": "90fcf4dd87",
    "lth-conv4": "fdf242012b",
    "lth-conv6": "f2cd656f33",
    "lth-vgg19": "f6b3fcded7",
    "lth-resnet18": "2b32c96216",
    "openlth-resnet20": "508d89d444",
    "openlth-resnet20-rewind": "24cda679a4",
    "openlth-vgg16": "bd0928d434",
    "openlth-vgg16-rewind": "8b12b9b48f",
    "mnist1d-lth-500": "a3397f3cd0",
    "renda-mnist1d": "0d29733564",
}


@pytest.mark.parametrize("name", sorted(GOLDEN_HASHES))
def test_old_config_dicts_keep_their_run_hash(name):
    d, expected = GOLDEN_HASHES[name]
    assert C.from_dict(d).run_hash() == expected


@pytest.mark.parametrize("name", sorted(GOLDEN_PRESET_HASHES))
def test_presets_keep_their_run_hash(name):
    assert C.from_dict(C.preset(name)).run_hash() == GOLDEN_PRESET_HASHES[name]
