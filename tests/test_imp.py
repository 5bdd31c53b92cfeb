import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import load_ticket, registry_problem, run_imp
from ticketlab.store import JobDir, RunLock, load_tensors, read_csv


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def _run(cfg, data, path):
    return run_imp(cfg, registry_problem(cfg, data), path)


def _masks(run_dir, levels, replicate=0):
    return [M.load_mask(JobDir(run_dir, replicate, lv, "ticket").path.parent / "mask.safetensors") for lv in levels]


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
    level0 = JobDir(tmp_path, 0, 0, "ticket").path.parent
    rewind = load_tensors(level0 / "rewind.safetensors")
    init = load_tensors(level0 / "init.safetensors")
    assert any(not torch.equal(rewind[k], init[k]) for k in init)  # k=10 differs from theta_0
    # theta_k equals a fresh network trained for exactly 10 iterations (same seed and data order)
    short = tiny_config(train={"steps": "10it"}, imp={"levels": 0, "rewind": "0it"})
    _run(short, data, tmp_path / "short")
    final10 = load_tensors(JobDir(tmp_path / "short", 0, 0, "ticket").file("final.safetensors"))
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
    random = M.load_mask(JobDir(tmp_path, 0, 2, "random_prune").file("mask.safetensors"))
    for name in ticket_mask:
        assert int(random[name].sum()) == int(ticket_mask[name].sum())
    assert M.hamming(random, ticket_mask) > 0
    reinit_start = JobDir(tmp_path, 0, 2, "reinit")
    assert reinit_start.result()["density"] == rows[4]["density"]


def test_one_shot_levels_match_the_iterative_density_ladder(data, tmp_path):
    cfg = tiny_config(imp={"one_shot": True, "levels": 3, "baselines": ()})
    _run(cfg, data, tmp_path)
    masks = _masks(tmp_path, range(4))
    n = masks[0]["fc.0.weight"].numel()
    for level in (1, 2, 3):
        assert int(masks[level]["fc.0.weight"].sum()) == n - round((1 - 0.5**level) * n)
    target = tiny_config(imp={"one_shot": True, "target_density": 0.1, "baselines": ()})
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
    first = JobDir(tmp_path, 0, 1, "ticket").file("result.json").stat().st_mtime_ns
    rows = _run(cfg.replace(imp={"levels": 2, "replicates": 2}), data, tmp_path)
    assert JobDir(tmp_path, 0, 1, "ticket").file("result.json").stat().st_mtime_ns == first
    assert sorted((r["replicate"], r["level"]) for r in rows) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len(read_csv(tmp_path / "results.csv")) == 6


def test_a_half_finished_job_is_redone_and_results_match(data, tmp_path):
    cfg = tiny_config()
    full = _run(cfg, data, tmp_path / "full")
    _run(cfg, data, tmp_path / "cut")
    # Simulate a crash inside level 2: its result and final weights never got written.
    for branch in ("ticket", "reinit"):
        job = JobDir(tmp_path / "cut", 0, 2, branch)
        job.file("result.json").unlink()
        job.file("final.safetensors").unlink()
    again = _run(cfg, data, tmp_path / "cut")
    key = ["replicate", "level", "branch", "density", "final_test_acc", "best_test_acc", "early_stop_step", "train_acc"]
    assert [[r[k] for k in key] for r in again] == [[r[k] for k in key] for r in full]


def test_a_second_process_on_the_same_run_is_refused(data, tmp_path):
    cfg = tiny_config(imp={"levels": 1})
    with RunLock(tmp_path):
        with pytest.raises(TicketlabError, match="in use by pid"):
            _run(cfg, data, tmp_path)
    assert not (tmp_path / "results.csv").exists()


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
    from ticketlab.imp import derive_seed
    from ticketlab.training import train

    cfg = tiny_config(
        train={"optimizer": "sgd", "lr": 0.05, "schedule": "step", "milestones": ("30it",), "warmup": "15it"},
        imp={"rewind": "20it", "levels": 0},
    )
    _run(cfg, data, tmp_path)
    level0 = JobDir(tmp_path, 0, 0, "ticket")
    model = registry_problem(cfg, data).init_model(0)
    model.load_state_dict(load_tensors(level0.path.parent / "rewind.safetensors"))
    mask = M.full_mask(model, M.prunable_names(model))
    train(model, data, cfg.train, mask=mask, data_seed=derive_seed(cfg.imp.seed, 0, "data"), start=20)
    final = load_tensors(level0.file("final.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())


def test_taking_the_lock_sweeps_temporaries_a_killed_writer_left(tmp_path):
    stale = tmp_path / "replicate_0" / "level_1" / ".mask.safetensors.abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    kept = tmp_path / "replicate_0" / "level_1" / "mask.safetensors"
    kept.write_bytes(b"x")
    with RunLock(tmp_path):
        pass
    assert not stale.exists() and kept.exists()
