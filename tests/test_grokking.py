"""`ticketlab grokking`: phase detection, the masks' densities and counts, theta_0 shared, resumption, bad flags."""

from __future__ import annotations

import pytest

from ticketlab import cli
from ticketlab import grokking as G
from ticketlab import masks as M
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors, read_csv, read_record

FLAGS = [
    "grokking",
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--widths",
    "24,12",
    "--steps",
    "40it",
    "--eval-every",
    "10it",
    "--batch-size",
    "50",
    "--lr",
    "0.1",
    "--optimizer",
    "sgd",
    "--momentum",
    "0.9",
    "--replicates",
    "1",
    "--memorised-at",
    "0.8",
    "--generalised-at",
    "0.7",
    "--density",
    "0.3",
    "--no-progress",
]


def _run(out) -> RunDir:
    assert cli.main([*FLAGS, "--out", str(out)]) == 0
    (path,) = [p for p in out.iterdir() if p.name.startswith("grokking-")]
    return RunDir(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    return _run(tmp_path_factory.mktemp("grok"))


def test_phases_of_a_hand_made_curve():
    rows = [
        {"step": 0, "train_acc": 0.1, "test_acc": 0.1},
        {"step": 100, "train_acc": 0.99, "test_acc": 0.2},  # memorised here (>= 0.99), not at 0.98
        {"step": 200, "train_acc": 1.0, "test_acc": 0.94},
        {"step": 300, "train_acc": 1.0, "test_acc": 0.95},  # generalised here (>= 0.95)
        {"step": 400, "train_acc": 1.0, "test_acc": 0.5},  # a later drop changes nothing
    ]
    assert G.phases(rows, 0.99, 0.95) == G.Phases(memorised=100, generalised=300)
    assert G.phases(rows, 0.99, 0.96) == G.Phases(memorised=100, generalised=None)
    assert G.phases(rows[:1], 0.99, 0.95) == G.Phases(None, None)
    assert G.first_at([{"step": 5}, {"step": 7, "test_acc": 1.0}], "test_acc", 1.0) == 7  # rows without it skipped


def test_masks_have_the_density_and_random_copies_the_generalised_counts(run):
    rows = read_csv(run.results_file)
    assert [r["mask"] for r in rows] == ["dense", *G.MASKS]
    masks = {r["mask"]: M.load_mask(run.job(0, 0, f"{r['mask']}-d0.3").mask) for r in rows[1:]}
    total = sum(m.numel() for m in masks["generalised"].values())
    for name, mask in masks.items():
        assert abs(M.count(mask) - 0.3 * total) <= 1, name  # 2-3 layers, each rounding once
        assert float(rows[[r["mask"] for r in rows].index(name)]["density"]) == pytest.approx(M.density(mask))
    for layer, kept in masks["generalised"].items():
        assert int(masks["random"][layer].sum()) == int(kept.sum())
    assert M.hamming(masks["random"], masks["generalised"]) > 0
    assert any(not bool((masks["memorised"][n] == masks["snip"][n]).all()) for n in masks["snip"])


def test_every_mask_job_starts_from_theta_0_and_the_phases_are_kept(run):
    dense = run.job(0, 0, "dense")
    theta0 = load_tensors(dense.init)
    for name in G.MASKS:
        start = load_tensors(run.job(0, 0, f"{name}-d0.3").init)
        assert start.keys() == theta0.keys()
        assert all(bool((start[k] == theta0[k]).all()) for k in theta0), name
    record = read_record(dense.result)
    curve = record["curve"]
    assert record["memorised_step"] == G.first_at([dict(zip(curve, v)) for v in zip(*curve.values())], "train_acc", 0.8)
    for phase in ("memorised", "generalised"):
        assert (dense.path / f"{phase}.safetensors").exists()
        if record[f"{phase}_weights_reached"]:
            assert record[f"{phase}_weights_step"] == record[f"{phase}_step"]


def test_rerun_trains_nothing_and_same_seed_same_bytes(run, tmp_path, monkeypatch):
    before = run.results_file.read_bytes()
    monkeypatch.setattr(G, "train", lambda *a, **k: pytest.fail("a finished job was trained again"))
    assert cli.main([*FLAGS, "--out", str(run.path.parent)]) == 0
    assert run.results_file.read_bytes() == before
    monkeypatch.undo()
    assert _run(tmp_path).results_file.read_bytes() == before  # a fresh directory, the same seed


@pytest.mark.parametrize(
    "flag,value",
    [("--density", "1.2"), ("--density", "0"), ("--memorised-at", "0"), ("--generalised-at", "1.5")],
)
def test_bad_values_exit_2_with_one_line(flag, value, tmp_path, capsys):
    assert cli.main([*FLAGS, flag, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_report_prints_the_summary_table(run, capsys):
    assert cli.main(["report", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("grokking tickets") and "generalised" in out and "curves.png" in out


def test_html_report_shows_the_grokking_panel_not_imp_panels(run):
    # a grokking run's results.csv has no level/branch columns: the IMP panels once crashed on it (KeyError 'level')
    assert cli.main(["report", str(run.path), "--html"]) == 0
    page = (run.path / "report.html").read_text()
    assert "Grokking tickets (ticketlab grokking)" in page and "steps to generalise" in page
    assert "grokking tickets, 1 replicate(s)" in page and "data:image/png;base64," in page
    assert "Accuracy vs weights remaining" not in page
