import dataclasses
import json
import time
import tracemalloc

import pytest

from ticketlab import cli, cli_flags
from ticketlab import config as C
from ticketlab.configfile import MAX_FILE_BYTES, load_file
from ticketlab.errors import TicketlabError
from ticketlab.presets import preset
from ticketlab.rundir import RunDir
from ticketlab.steps import Step
from ticketlab.store import write_record


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
        ({"imp": {"mode": "one-shot", "target_density": 0}}, r"target_density must be in \(0, 1\]"),
        ({"imp": {"target_density": 0.1}}, "needs --one-shot"),
        ({"train": {"steps": "10 epochs"}}, "train.steps: malformed step '10 epochs'"),
        ({"train": {"milestones": [80]}}, "malformed step '80'"),
        ({"imp": {"mode": "twice"}}, "not one of iterative, one-shot, at-init"),
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
    assert C.from_dict(load_file(y)).train.lr == 0.05
    assert C.from_dict(load_file(j)).prune.strategy == "global"


def test_unreadable_or_malformed_config_file(tmp_path):
    with pytest.raises(TicketlabError, match="cannot read config file"):
        load_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(TicketlabError, match="cannot parse config file"):
        load_file(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(TicketlabError, match="must hold a mapping"):
        load_file(listy)


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
        ("imp", {"one_shot": "maybe"}, "must be true or false"),
        ("imp", {"one_shot": True, "mode": "at-init"}, "contradicts"),
    ],
)
def test_model_and_pruning_fields_are_validated(section, values, message):
    with pytest.raises(TicketlabError, match=message):
        C.from_dict({section: values})


def test_model_kwargs_pass_only_what_is_set():
    assert C.ModelConfig().kwargs() == {}
    given = {"width": 0.5, "norm": "group", "dropout": 0.1}
    assert C.ModelConfig(**given).kwargs() == given


OLD_LADDER = {"prune": {"ladder": "per-level"}}  # how runs made before the exact ladder counted


def test_run_hash_is_stable_across_versions():
    # The hash of the default experiment as version 1 computed it: adding fields must not move old runs.
    old = C.from_dict(OLD_LADDER)
    assert old.run_hash() == "23974710c9"
    assert old.replace(model={"width": 0.5}).run_hash() != "23974710c9"
    assert old.replace(train={"channels_last": True}).run_hash() != "23974710c9"
    # the exact ladder counts differently, so an iterative run gets a directory of its own; one-shot does not
    assert C.ExperimentConfig().run_hash() not in ("23974710c9", "")
    one_shot = {"imp": {"mode": "one-shot"}}
    assert C.from_dict(one_shot).run_hash() == C.from_dict(C.merge(one_shot, OLD_LADDER)).run_hash()


def test_an_old_run_directory_resumes_on_the_ladder_it_was_made_with(tmp_path):
    old = C.from_dict(OLD_LADDER).to_dict()
    old["prune"].pop("ladder")  # as ticketlab 0.1 wrote config.json
    write_record(tmp_path / "config.json", {"config": old, "hash": "23974710c9"})
    cfg = RunDir(tmp_path).config()
    assert cfg.prune.ladder == "per-level" and cfg.run_hash() == "23974710c9"


def test_layer_fractions_parse_to_a_mapping():
    cfg = C.from_dict({"prune": {"layer_fractions": "fc.0.weight=0.1, fc.2.weight=0"}})
    assert cfg.prune.overrides() == {"fc.0.weight": 0.1, "fc.2.weight": 0.0}
    assert C.from_dict({"imp": {"mode": "at-init", "target_density": 0.1}}).imp.target_density == 0.1


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
    assert C.from_dict(C.merge(d, OLD_LADDER)).run_hash() == expected


@pytest.mark.parametrize("name", sorted(GOLDEN_PRESET_HASHES))
def test_presets_keep_their_run_hash(name):
    assert C.from_dict(C.merge(preset(name), OLD_LADDER)).run_hash() == GOLDEN_PRESET_HASHES[name]


@pytest.mark.parametrize(
    "old, mode", [({}, "iterative"), ({"one_shot": True}, "one-shot"), ({"at_init": "true"}, "at-init")]
)
def test_imp_mode_replaces_the_old_booleans_with_the_same_hash(old, mode):
    # config.json files of old run directories and old user config files still load, to the same run directory
    legacy = C.from_dict({"imp": {**old, "target_density": None}})
    today = C.from_dict({"imp": {"mode": mode}})
    assert legacy == today and legacy.imp.mode == mode
    assert today.run_hash() == legacy.run_hash()
    assert today.imp.prunes_from_dense == (mode != "iterative")


def test_an_old_run_directorys_config_json_loads_and_keeps_its_hash():
    saved = C.ExperimentConfig().replace(imp={"mode": "one-shot", "rewind": "500it"}).to_dict()
    saved["imp"].pop("mode")
    saved["imp"].update(one_shot=True, at_init=False)  # as version 2 wrote it
    old = json.loads(json.dumps(saved))
    cfg = C.from_dict(old)
    assert cfg.imp.mode == "one-shot" and cfg.imp.rewind == Step(500, "it")
    assert cfg.run_hash() == C.from_dict({"imp": {"one_shot": True, "rewind": "500it"}}).run_hash()


def test_steps_are_typed_once_and_written_back_as_text():
    cfg = C.from_dict(preset("lth-vgg19"))
    assert cfg.train.steps == Step(160, "ep") and cfg.train.warmup == Step(10000, "it")
    assert cfg.train.milestones == (Step(80, "ep"), Step(120, "ep")) and cfg.imp.rewind == Step(0, "it")
    written = cfg.to_dict()["train"]
    assert (written["steps"], written["warmup"], written["eval_every"]) == ("160ep", "10000it", "100it")
    assert json.loads(json.dumps(cfg.to_dict()))["train"]["milestones"] == ["80ep", "120ep"]
    assert C.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(train=C.as_dict(cfg.train)) == cfg  # what a branch does with a changed TrainConfig


def test_sections_built_directly_hold_steps_too():
    assert C.TrainConfig(steps="3ep").steps == Step(3, "ep")
    replaced = dataclasses.replace(C.TrainConfig(), warmup="10it", milestones=("5it",))
    assert replaced.warmup == Step(10, "it") and replaced.milestones == (Step(5, "it"),)
    assert C.ImpConfig(rewind="2ep").rewind == Step(2, "ep")
    with pytest.raises(TicketlabError, match="eval_every must be at least 1it"):
        C.TrainConfig(eval_every="0ep")
    with pytest.raises(TicketlabError, match="malformed step"):
        dataclasses.replace(C.ImpConfig(), rewind="soon")


def test_config_file_may_use_the_old_booleans_and_a_flag_still_wins(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("imp:\n  at_init: true\n  target_density: 0.1\n")
    parser = cli.build_parser()
    assert cli_flags.config_from_args(parser.parse_args(["imp", "--config", str(old)])).imp.mode == "at-init"
    args = ["imp", "--config", str(old), "--one-shot"]
    assert cli_flags.config_from_args(parser.parse_args(args)).imp.mode == "one-shot"


@pytest.mark.parametrize(
    "flags, mode",
    [([], "iterative"), (["--mode", "one-shot"], "one-shot"), (["--one-shot"], "one-shot"), (["--at-init"], "at-init")],
)
def test_mode_flag_and_its_shorthands(flags, mode):
    assert cli_flags.config_from_args(cli.build_parser().parse_args(["imp", *flags])).imp.mode == mode


def test_mode_shorthands_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["imp", "--one-shot", "--at-init"])
    assert e.value.code == 2 and "not allowed with argument --one-shot" in capsys.readouterr().err


# A file that is not a config must cost a line of error, not a hang, a traceback or the machine's memory.
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def _refused_quickly(path, message):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(TicketlabError, match=message) as e:
            load_file(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0 and peak < 50e6
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 500
    _refused_quickly(bomb, "anchors and aliases")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"train:\n  lr: 0.1 \xff\xfe\n", "is not UTF-8 text"),
        (bytes(range(256)) * 4, "is not UTF-8 text"),
        (b"\x00" * 4096, "is not UTF-8 text"),
        (b"#" * (MAX_FILE_BYTES + 1), "KiB: is it a config file"),
        (b"train: {lr: [[[[[[[[" * 1000, "cannot parse config file"),
        (b"[" * 60_000, "cannot parse config file"),
        (b"train: {lr: [" + b"1," * 30_000 + b"]}", "cannot parse config file"),
        (b"".join(b" " * i + b"a:\n" for i in range(300)), "cannot parse config file"),
    ],
)
def test_files_that_are_not_configs_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    _refused_quickly(path, message)
    (tmp_path / "c.json").write_bytes(content)
    _refused_quickly(tmp_path / "c.json", message)


@pytest.mark.parametrize(
    "name, content",
    [
        ("c.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n"),
        ("c.yaml", "train: {lr: 0.1}\ntrain: {steps: 10it}\n"),
        ("c.json", '{"train": {"lr": 0.1, "lr": 0.2}}'),
    ],
)
def test_a_key_given_twice_is_refused_rather_than_the_last_one_winning(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TicketlabError, match="is given twice"):
        load_file(path)


@pytest.mark.parametrize(
    "d",
    [
        {"train": {"lr": "x" * 10_000}},
        {"train": {"steps": "9" * 10_000}},
        {"train": {"steps": "9" * 10_000 + "it"}},
        {"train": {"milestones": "x" * 10_000}},
        {"train": {"optimizer": "x" * 10_000}},
        {"train": {"x" * 10_000: 1}},
        {"x" * 10_000: {}},
        {"model": {"widths": ",".join(["-1"] * 5_000)}},
        {"prune": {"layer_fractions": "x" * 10_000}},
        {"imp": {"baselines": ["reinit"] * 5_000}},
        {"imp": {"mode": "x" * 10_000}},
        {"imp": {"one_shot": True, "mode": "x" * 10_000}},
    ],
)
def test_errors_quote_at_most_a_short_piece_of_a_long_value(d):
    with pytest.raises(TicketlabError) as e:
        C.from_dict(d)
    assert len(str(e.value)) < 300


def test_cli_refuses_an_alias_bomb_in_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert cli.main(["imp", "--config", str(bomb), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ticketlab: error:") and "anchors and aliases" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_mode_contradicted_by_an_old_style_key_is_refused():
    with pytest.raises(TicketlabError, match="contradicts an old-style key set to false"):
        C.from_dict(C.upgrade({"imp": {"mode": "one-shot", "one_shot": False}}))
    assert C.from_dict(C.upgrade({"imp": {"mode": "at-init", "one_shot": False}})).imp.mode == "at-init"
