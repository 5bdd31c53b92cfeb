"""The HTML report's panels for the studies (stability, barriers, alignment, early-bird): present exactly when their
CSV is, and showing mean ± sample std (ddof=1) in points of the fractions the CSVs hold."""

import shutil

import pytest
from test_html import run_dir  # noqa: F401 -- the module's finished two-replicate run

from ticketlab.report.html import render
from ticketlab.store import write_csv


@pytest.fixture
def study_dir(run_dir, tmp_path):  # noqa: F811
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_no_study_panel_without_its_csv(study_dir):
    page = render(study_dir)
    for title in ("Stability to SGD noise", "Error barriers between", "Alignment by permutation", "Early-bird ticket"):
        assert title not in page


def test_stability_panel_gives_instability_in_points_with_sample_std(study_dir):
    rows = [
        {"replicate": r, "level": 2, "density": 0.25, "k": 0, "instability": inst, "barrier": inst, "error_a": 0.1,
         "error_b": 0.1, "acc_a": 0.9, "acc_b": 0.9}
        for r, inst in enumerate((0.01, 0.03))
    ]  # fmt: skip
    write_csv(study_dir / "instability.csv", rows, list(rows[0]))
    path = [
        {"replicate": r, "level": 2, "density": 0.25, "k": 0, "alpha": a, "test_error": e}
        for r in (0, 1)
        for a, e in ((0.0, 0.1), (0.5, 0.12), (1.0, 0.1))
    ]
    figures = render(study_dir).count("<svg")
    write_csv(study_dir / "stability.csv", path, list(path[0]))
    page = render(study_dir)
    assert page.count("<svg") == figures + 1  # error vs position on the path
    assert "Stability to SGD noise" in page
    # 1 and 3 points: mean 2.00, sample std 1.41 (a population std would say 1.00); 2.00 is not under 2: unstable
    assert "2.00 ± 1.41" in page and "<td>no</td>" in page


def test_barrier_align_and_early_bird_panels(study_dir):
    write_csv(
        study_dir / "level_barriers.csv",
        [{"replicate": r, "level_from": 0, "level_to": 1, "density_to": 0.5, "barrier": b, "instability": b,
          "error_from": 0.1, "error_to": 0.1, "acc_to": 0.9, "acc_dense": 0.9, "acc_drop": 0.0}
         for r, b in enumerate((0.0, 0.02))],
        ["replicate", "level_from", "level_to", "density_to", "barrier", "instability", "error_from", "error_to",
         "acc_to", "acc_dense", "acc_drop"],
    )  # fmt: skip
    align_rows = [
        {"level": 0, "replicate_a": 0, "replicate_b": 1, "alignment": how, "points": 30, "error_a": 0.1,
         "error_b": 0.1, "max_error": 0.1 + b, "barrier": b, "instability": b, "mask_jaccard": 1.0}
        for how, b in (("none", 0.2), ("weight_matching", 0.02))
    ]  # fmt: skip
    write_csv(study_dir / "align.csv", align_rows, list(align_rows[0]))
    eb = [
        {"replicate": r, "emerged": True, "emergence_step": s, "emergence_epoch": 1.0, "hamming": 0.05,
         "ticket_test_acc": 0.88, "random_prune_test_acc": 0.87, "early_bird_flops": 1e9, "imp_flops": 4e9,
         "imp_flops_source": "recorded", "imp_level": 2, "imp_density": 0.25, "imp_ticket_test_acc": 0.89}
        for r, s in enumerate((400, 600))
    ]  # fmt: skip
    write_csv(study_dir / "early_bird.csv", eb, list(eb[0]))
    page = render(study_dir)
    assert "0 -&gt; 1" in page and "1.00 ± 1.41" in page  # barriers of 0 and 2 points
    assert "weight_matching" in page and "20.00" in page and "2.00" in page
    assert "500 ± 141" in page  # emergence at 400 and 600 it
    assert "4.00" in page  # IMP spends 4x the early-bird route's FLOPs
