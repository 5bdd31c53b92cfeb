import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.data import batches, load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.prunable import prunable_names
from ticketlab.pruning import collapse, keep_counts, prune_to
from ticketlab.rundir import RunDir, load_ticket
from ticketlab.scores import Examples, score
from ticketlab.seeds import derive_seed
from ticketlab.store import load_tensors, read_csv, read_record


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def _run(cfg, data, path):
    return run_imp(cfg, registry_problem(cfg, data), path).rows()


def _masks(run_dir, levels, replicate=0):
    return [M.load_mask(RunDir(run_dir).level(replicate, lv).mask) for lv in levels]


def test_masks_shrink_and_sparsity_is_exact_per_layer_and_globally(data, tmp_path):
    cfg = tiny_config(imp={"levels": 4, "baselines": ()})
    rows = _run(cfg, data, tmp_path)
    masks = _masks(tmp_path, range(5))
    # layers fc.0, fc.1 at 50% per level; the output layer fc.2 at its own 25% per level
    expected = {n: m.numel() for n, m in masks[0].items()}
    for level in range(1, 5):
        assert M.is_subset(masks[level], masks[level - 1])
        for name in expected:
            frac = 0.25 if name == "fc.2.weight" else 0.5
            expected[name] -= round(frac * expected[name])
            assert int(masks[level][name].sum()) == expected[name]
        row = next(r for r in rows if r["level"] == level)
        assert row["density"] == sum(expected.values()) / M.size(masks[0])


def test_global_strategy_hits_the_global_count(data, tmp_path):
    cfg = tiny_config(prune={"strategy": "global", "fraction": 0.3, "output_fraction": None}, imp={"baselines": ()})
    _run(cfg, data, tmp_path)
    masks = _masks(tmp_path, range(3))
    total = M.size(masks[0])
    assert M.count(masks[1]) == total - round(0.3 * total)
    assert M.count(masks[2]) == M.count(masks[1]) - round(0.3 * M.count(masks[1]))
    # one threshold: not every layer keeps the same density
    assert len({round(d, 4) for d in M.layer_densities(masks[2]).values()}) > 1


def test_ticket_starts_from_the_rewound_weights_bit_for_bit(data, tmp_path):
    cfg = tiny_config(imp={"rewind": "10it", "baselines": ()})
    _run(cfg, data, tmp_path)
    level0 = RunDir(tmp_path).level(0, 0).path
    rewind = load_tensors(level0 / "rewind.safetensors")
    init = load_tensors(level0 / "init.safetensors")
    assert any(not torch.equal(rewind[k], init[k]) for k in init)  # k=10 differs from theta_0
    # theta_k equals a fresh network trained for exactly 10 iterations (same seed and data order)
    short = tiny_config(train={"steps": "10it"}, imp={"levels": 0, "rewind": "0it"})
    _run(short, data, tmp_path / "short")
    final10 = load_tensors(RunDir(tmp_path / "short").job(0, 0, "ticket").final)
    assert all(torch.equal(rewind[k], final10[k]) for k in rewind)
    for level in (1, 2):
        ticket = load_ticket(tmp_path, level)
        for name, value in rewind.items():
            expected = value * ticket.mask[name] if name in ticket.mask else value
            assert torch.equal(ticket.state[name], expected), name


def test_same_seed_same_masks_and_accuracies(data, tmp_path):
    cfg = tiny_config()
    a, b = _run(cfg, data, tmp_path / "a"), _run(cfg, data, tmp_path / "b")
    strip = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time_s"} for r in b]
    for ma, mb in zip(_masks(tmp_path / "a", range(3)), _masks(tmp_path / "b", range(3))):
        assert M.hamming(ma, mb) == 0.0
    c = _run(cfg.replace(imp={"seed": 1}), data, tmp_path / "c")
    assert [r["final_test_acc"] for r in c] != [r["final_test_acc"] for r in a]


def test_baselines_use_the_ticket_densities(data, tmp_path):
    cfg = tiny_config(imp={"levels": 2})
    rows = _run(cfg, data, tmp_path)
    assert [(r["level"], r["branch"]) for r in rows] == [
        (0, "ticket"),
        (1, "ticket"),
        (1, "reinit"),
        (1, "random_prune"),
        (2, "ticket"),
        (2, "reinit"),
        (2, "random_prune"),
    ]
    ticket_mask = _masks(tmp_path, [2])[0]
    random = M.load_mask(RunDir(tmp_path).job(0, 2, "random_prune").mask)
    for name in ticket_mask:
        assert int(random[name].sum()) == int(ticket_mask[name].sum())
    assert M.hamming(random, ticket_mask) > 0
    reinit_start = RunDir(tmp_path).job(0, 2, "reinit")
    assert read_record(reinit_start.result)["density"] == rows[4]["density"]


def test_one_shot_levels_match_the_iterative_density_ladder(data, tmp_path):
    cfg = tiny_config(imp={"mode": "one-shot", "levels": 3, "baselines": ()})
    _run(cfg, data, tmp_path)
    masks = _masks(tmp_path, range(4))
    n = masks[0]["fc.0.weight"].numel()
    for level in (1, 2, 3):
        assert int(masks[level]["fc.0.weight"].sum()) == n - round((1 - 0.5**level) * n)
    target = tiny_config(imp={"mode": "one-shot", "target_density": 0.1, "baselines": ()})
    rows = _run(target, data, tmp_path / "t")
    assert [r["level"] for r in rows] == [0, 1]
    m = _masks(tmp_path / "t", [1])[0]
    # the overall density is the target (to one weight per layer); the output layer, at its own lower rate,
    # keeps more than the hidden layers, in the proportion iterative pruning would give it
    assert abs(M.count(m) - 0.1 * M.size(m)) <= len(m)
    assert M.density({"o": m["fc.2.weight"]}) > 0.1 > M.density({"h": m["fc.0.weight"]})


def test_more_levels_and_replicates_reuse_finished_jobs(data, tmp_path):
    cfg = tiny_config(imp={"levels": 1, "baselines": ()})
    _run(cfg, data, tmp_path)
    first = RunDir(tmp_path).job(0, 1, "ticket").result.stat().st_mtime_ns
    rows = _run(cfg.replace(imp={"levels": 2, "replicates": 2}), data, tmp_path)
    assert RunDir(tmp_path).job(0, 1, "ticket").result.stat().st_mtime_ns == first
    assert sorted((r["replicate"], r["level"]) for r in rows) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len(read_csv(tmp_path / "results.csv")) == 6


def test_a_half_finished_job_is_redone_and_results_match(data, tmp_path):
    cfg = tiny_config()
    full = _run(cfg, data, tmp_path / "full")
    _run(cfg, data, tmp_path / "cut")
    # Simulate a crash inside level 2: its result and final weights never got written.
    for branch in ("ticket", "reinit"):
        job = RunDir(tmp_path / "cut").job(0, 2, branch)
        job.result.unlink()
        job.final.unlink()
    again = _run(cfg, data, tmp_path / "cut")
    key = ["replicate", "level", "branch", "density", "final_test_acc", "best_test_acc", "early_stop_step", "train_acc"]
    assert [[r[k] for k in key] for r in again] == [[r[k] for k in key] for r in full]


def test_a_run_directory_of_another_experiment_is_refused(data, tmp_path):
    _run(tiny_config(imp={"levels": 1}), data, tmp_path)
    with pytest.raises(TicketlabError, match="holds a different experiment"):
        _run(tiny_config(train={"lr": 0.05}, imp={"levels": 1}), data, tmp_path)


def test_rewind_point_after_training_is_refused(data, tmp_path):
    with pytest.raises(TicketlabError, match="must come before the end of training"):
        _run(tiny_config(imp={"rewind": "60it"}), data, tmp_path)


def test_rewinding_to_k_resumes_the_schedule_and_data_order(data, tmp_path):
    # Plain SGD keeps no optimizer state, so retraining the unpruned network from theta_k must land exactly on
    # the dense network's final weights -- only if the LR schedule (warmup, milestones) and the data order resume
    # at k exactly.
    from ticketlab.training import train

    cfg = tiny_config(
        train={"optimizer": "sgd", "lr": 0.05, "schedule": "step", "milestones": ("30it",), "warmup": "15it"},
        imp={"rewind": "20it", "levels": 0},
    )
    _run(cfg, data, tmp_path)
    level0 = RunDir(tmp_path).job(0, 0, "ticket")
    model = registry_problem(cfg, data).init_model(0)
    model.load_state_dict(load_tensors(level0.path.parent / "rewind.safetensors"))
    mask = M.full_mask(model, prunable_names(model))
    train(model, data, cfg.train, mask=mask, data_seed=derive_seed(cfg.imp.seed, 0, "data"), start=20)
    final = load_tensors(level0.final)
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())


def test_pruning_at_init_scores_the_rewind_point_and_prunes_each_level_from_dense(data, tmp_path):
    cfg = tiny_config(prune={"criterion": "snip"}, imp={"mode": "at-init", "levels": 2, "baselines": ("random_prune",)})
    _run(cfg, data, tmp_path)
    masks = _masks(tmp_path, range(3))
    for level in (1, 2):
        for name, m in masks[0].items():
            frac = 0.25 if name == "fc.2.weight" else 0.5
            assert int(masks[level][name].sum()) == m.numel() - round((1 - (1 - frac) ** level) * m.numel())
    # the mask is SNIP's at theta_0 (no training seen), whatever level 0's training did
    problem = registry_problem(cfg, data)
    model = problem.init_model(0)
    full = {n: torch.ones_like(m) for n, m in masks[0].items()}
    seed = derive_seed(0, 0, 1)
    examples = Examples(data.input_shape, lambda: ((x, y) for _, x, y in batches(data.train, 50, seed, 0, 1)))
    scores = score("snip", model=model, mask=full, examples=examples)
    counts = keep_counts([((n,), 0.25 if n == "fc.2.weight" else 0.5) for n in full], full)
    assert all(torch.equal(prune_to(scores, full, counts)[n], masks[1][n]) for n in full)


def test_synflow_at_init_to_a_target_density_with_rounds(data, tmp_path):
    cfg = tiny_config(
        prune={"criterion": "synflow", "rounds": 5, "strategy": "global", "output_fraction": None},
        imp={"mode": "at-init", "target_density": 0.02, "baselines": ()},
    )
    rows = _run(cfg, data, tmp_path)
    mask = _masks(tmp_path, [1])[0]
    assert M.count(mask) == M.size(mask) - round(0.98 * M.size(mask))
    assert [r["level"] for r in rows] == [0, 1]
    assert collapse(registry_problem(cfg, data).init_model(0), mask, data.train.inputs(slice(0, 1))) == []


def test_at_init_refuses_criteria_that_need_training_before_writing_anything(data, tmp_path):
    cfg = tiny_config(prune={"criterion": "movement"}, imp={"mode": "at-init"})
    with pytest.raises(TicketlabError, match="same at initialisation"):
        _run(cfg, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_erk_and_dense_first_layer_in_imp(data, tmp_path):
    cfg = tiny_config(prune={"strategy": "erk", "keep_dense": ("first",)}, imp={"levels": 2})
    rows = _run(cfg, data, tmp_path)
    masks = _masks(tmp_path, range(3))
    assert all(bool(m["fc.0.weight"].all()) for m in masks)  # kept dense, and counted in the density
    # fc.1 is the only ERK layer (fc.0 dense, fc.2 at its output rate): it keeps exactly 0.5 ** level
    assert [int(m["fc.1.weight"].sum()) for m in masks] == [512, 256, 128]
    ticket = next(r for r in rows if r["level"] == 2 and r["branch"] == "ticket")
    # fc.0 dense (640), fc.1 at 128, the output layer at 160 -> 120 -> 90: the dense layer counts
    assert ticket["density"] == M.density(masks[2]) == (640 + 128 + 90) / (640 + 512 + 160)
    rand = M.load_mask(RunDir(tmp_path).job(0, 2, "random_prune").mask)
    assert all(int(rand[n].sum()) == int(masks[2][n].sum()) for n in rand)  # ERK: the ticket's count per layer


def test_layer_collapse_warns_or_refuses_with_a_density_table(data, tmp_path, capsys):
    cfg = tiny_config(prune={"layer_fractions": ("fc.1.weight=1",)}, imp={"levels": 1, "baselines": ()})
    _run(cfg, data, tmp_path / "warn")
    err = capsys.readouterr().err
    assert "layer collapse at replicate 0 level 1: fc.1.weight has no weight left" in err
    assert "no path from the input reaches any output" in err and "fc.1.weight" in err
    refuse = tiny_config(
        prune={"layer_fractions": ("fc.1.weight=1",), "on_collapse": "refuse"}, imp={"levels": 1, "baselines": ()}
    )
    with pytest.raises(TicketlabError, match="layer collapse"):
        _run(refuse, data, tmp_path / "refuse")
    assert not (RunDir(tmp_path / "refuse").level(0, 1).mask).exists()


def _alive_counts(mask, layers):
    return [int(mask[f"{n}.weight"].reshape(mask[f"{n}.weight"].shape[0], -1).any(1).sum()) for n in layers]


def test_structured_levels_remove_whole_neurons_exactly_and_export_to_a_smaller_equal_model(data, tmp_path):
    from ticketlab.export import export_ticket, load_exported

    cfg = tiny_config(prune={"units": "l1"}, imp={"levels": 2})
    _run(cfg, data, tmp_path)
    masks = _masks(tmp_path, range(3))
    # hidden layers fc.0 (32) and fc.1 (16) lose half their neurons per level; the output layer is no unit
    assert [_alive_counts(m, ["fc.0", "fc.1"]) for m in masks] == [[32, 16], [16, 8], [8, 4]]
    m = masks[2]
    dead = ~m["fc.0.weight"].any(1)
    assert torch.equal(m["fc.0.bias"], ~dead)  # a dead neuron's bias goes with it
    assert not m["fc.1.weight"][:, dead].any()  # and so do the weights that read it
    final = load_tensors(RunDir(tmp_path).job(0, 2, "ticket").final)
    assert all(bool((final[n][~m[n]] == 0).all()) for n in m)  # pruned biases stayed zero through training
    rand = M.load_mask(RunDir(tmp_path).job(0, 2, "random_prune").mask)
    assert _alive_counts(rand, ["fc.0", "fc.1"]) == [8, 4] and not torch.equal(rand["fc.0.bias"], m["fc.0.bias"])
    assert M.count(rand) == M.count(m)  # random neurons, as many per layer: the same weights left

    info = export_ticket(tmp_path, 2, tmp_path / "t.pt2")
    assert info["params_after"] == 8 * data.input_shape[0] + 8 + 4 * 8 + 4 + 10 * 4 + 10
    assert info["max_diff"] < 1e-5
    model = registry_problem(cfg, data).init_model(0)
    model.load_state_dict(final)
    x = data.test.inputs(slice(0, 64))
    with torch.no_grad():
        assert torch.allclose(load_exported(tmp_path / "t.pt2")(x), model.eval()(x), atol=1e-5)


def test_network_slimming_prunes_filters_by_batchnorm_scale_under_one_threshold(tmp_path):
    images = load_dataset("synthetic-images")
    cfg = tiny_config(
        data={"dataset": "synthetic-images"},
        model={"model": "conv_2", "widths": (), "width": 0.125, "norm": "batch"},
        train={"slimming": 1e-3, "steps": "20it"},
        prune={"units": "bn", "strategy": "global", "fraction": 0.5, "output_fraction": None},
        imp={"levels": 1, "baselines": ()},
    )
    _run(cfg, images, tmp_path)
    trained = load_tensors(RunDir(tmp_path).job(0, 0, "ticket").final)
    mask = _masks(tmp_path, [1])[0]
    # the units are the two convs' filters (8 each; the fc layers have no BatchNorm): 16 -> 8, by |gamma|
    gamma = torch.cat([trained["features.1.weight"], trained["features.4.weight"]]).abs()
    kept = torch.cat([mask["features.1.weight"], mask["features.4.weight"]])
    assert int(kept.sum()) == 8 and float(gamma[kept].min()) > float(gamma[~kept].max())
    assert torch.equal(mask["features.0.weight"].flatten(1).any(1), mask["features.1.weight"])
    assert torch.equal(mask["features.1.bias"], mask["features.1.weight"])
    assert bool(mask["fc.0.weight"].any(0).sum() < 2048)  # the fc inputs that read pruned filters went too
