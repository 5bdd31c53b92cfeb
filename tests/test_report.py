"""Tables, plots and `ticketlab report`: one summary (mean, sample std, n) behind every table, said in its header."""

import ast
import math
from pathlib import Path

import pytest
from test_cli import TINY, ticketlab

from ticketlab.cli import main
from ticketlab.compare_criteria import COLUMNS as CRITERIA_COLUMNS
from ticketlab.report import report
from ticketlab.report.tables import criteria_table, disjoint_table, imp_table, mean_std, summarize
from ticketlab.store import read_csv, write_csv

PNG = b"\x89PNG\r\n\x1a\n"


def _imp_rows(accs_by_cell):
    """Rows as results.csv holds them: {(level, branch): [acc per replicate]}, density halving per level."""
    return [
        {"replicate": r, "level": level, "branch": branch, "density": 0.5**level, "final_test_acc": acc}
        for (level, branch), accs in accs_by_cell.items()
        for r, acc in enumerate(accs)
    ]


def test_summarize_gives_the_sample_std_not_the_population_std():
    s = summarize([0.6, 0.7, 0.8])
    assert s.n == 3 and s.mean == pytest.approx(0.7)
    assert s.std == pytest.approx(0.1)  # sqrt(0.02 / 2); the population std would be 0.0816
    assert mean_std(s) == "70.00 ± 10.00"


def test_one_replicate_shows_no_spread():
    s = summarize([0.5])
    assert s.n == 1 and math.isnan(s.std) and mean_std(s) == "50.00"
    text = imp_table(_imp_rows({(0, "ticket"): [0.9], (1, "ticket"): [0.8], (1, "reinit"): [0.7]}))
    assert "±" not in text and "n=1" in text.splitlines()[0]


def test_imp_table_header_states_ddof_and_n_and_cells_are_mean_and_sample_std():
    rows = _imp_rows(
        {
            (0, "ticket"): [0.9, 0.9, 0.9],
            (1, "ticket"): [0.6, 0.7, 0.8],
            (1, "random_prune"): [0.5, 0.5, 0.5],
            (1, "reinit"): [0.4, 0.5, 0.6],
        }
    )
    title, head, _, dense, level1 = imp_table(rows).splitlines()
    assert "mean ± sample std (ddof=1) over n=3 replicates" in title and "final_test_acc" in title
    assert head.split("  ")[-3:] == ["ticket (rewound)", "random re-init", "random pruning"]
    assert dense.split() == ["0", "100.00%", "90.00", "±", "0.00", "-", "-"]
    assert level1.split() == ["1", "50.00%", "70.00", "±", "10.00", "50.00", "±", "10.00", "50.00", "±", "0.00"]


def test_a_cell_with_fewer_replicates_says_so():
    rows = _imp_rows({(0, "ticket"): [0.9, 0.9, 0.9], (1, "ticket"): [0.6, 0.7, 0.8], (1, "reinit"): [0.4, 0.6]})
    lines = imp_table(rows).splitlines()
    assert "n=2-3" in lines[0] and "varies" in lines[0]
    assert lines[-1].endswith("50.00 ± 14.14 (n=2)") and "70.00 ± 10.00  " in lines[-1]


def _criteria_rows():
    rows = [{"criterion": "dense", "mode": "-", "target_density": 1.0, "final_test_acc": a} for a in (0.9, 0.92)]
    for criterion, mode, density, accs in [
        ("snip", "at-init", 0.5, (0.8, 0.82)),
        ("snip", "at-init", 0.1, (0.6, 0.7)),
        ("large_final", "one-shot", 0.5, (0.85, 0.85)),
    ]:
        rows += [{"criterion": criterion, "mode": mode, "target_density": density, "final_test_acc": a} for a in accs]
    return rows


def test_criteria_table_from_hand_made_rows():
    lines = criteria_table(_criteria_rows()).splitlines()
    assert "mean ± sample std (ddof=1) over n=2 replicates" in lines[0]
    assert lines[1] == "dense network: 91.00 ± 1.41"
    assert lines[2].split() == ["criterion", "mode", "50%", "10%"]
    assert lines[4].split() == ["snip", "at-init", "81.00", "±", "1.41", "65.00", "±", "7.07"]
    assert lines[5].split() == ["large_final", "one-shot", "85.00", "±", "0.00", "-"]


def test_disjoint_table_from_hand_made_rows():
    rows = [
        {
            "round": 0,
            "forbidden": 0.0,
            "dense_test_acc": 0.9,
            "ticket_density": 0.25,
            "ticket_test_acc": 0.88,
            "overlap": 0,
        },
        {
            "round": 1,
            "forbidden": 0.25,
            "dense_test_acc": 0.8,
            "ticket_density": 0.2,
            "ticket_test_acc": 0.75,
            "overlap": 3,
        },
    ]
    lines = disjoint_table(rows).splitlines()
    assert "n=1" in lines[0]
    assert lines[1].split("  ")[0] == "round" and "earlier tickets hold" in lines[1]
    assert lines[3].split() == ["0", "0.00%", "90.00%", "25.00%", "88.00%", "0"]
    assert lines[4].split() == ["1", "25.00%", "80.00%", "20.00%", "75.00%", "3"]


def test_report_on_a_criteria_directory_reads_criteria_csv_and_redraws_the_plot(tmp_path):
    write_csv(tmp_path / "criteria.csv", _criteria_rows(), [c for c in CRITERIA_COLUMNS if c != "best_test_acc"])
    text, png = report(tmp_path)
    assert text == criteria_table(read_csv(tmp_path / "criteria.csv"))
    assert png == tmp_path / "criteria.png" and png.read_bytes()[:8] == PNG


def test_report_on_a_run_that_was_stopped_early(tmp_path):
    ticketlab("imp", *TINY, "--out", str(tmp_path), check=True)
    run_dir = next(tmp_path.iterdir())
    (run_dir / "results.csv").unlink()  # as if killed before the end
    (run_dir / "replicate_0" / "level_2" / "reinit" / "result.json").unlink()
    out = ticketlab("report", str(run_dir), check=True).stdout
    assert "random pruning" in out and len([line for line in out.splitlines() if line.strip().startswith("2 ")]) == 1
    assert "n=1" in out.splitlines()[0] and (run_dir / "plot.png").read_bytes()[:8] == PNG
    proc = ticketlab("report", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "has no config.json" in proc.stderr


def test_report_imports_no_workflow_but_the_trunk_results():
    """report/ is below the workflows: importing one of them (compare_criteria did, once) makes a cycle."""
    package = Path(__file__).resolve().parents[1] / "src" / "ticketlab" / "report"
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    workflows = {"ticketlab.compare_criteria", "ticketlab.disjoint", "ticketlab.branches", "ticketlab.cli"}
    assert not imported & workflows


def test_cost_table_sums_flops_and_wall_time_per_branch_and_shows_a_dash_for_old_runs():
    from ticketlab.report.tables import cost_summary, cost_table

    rows = [
        {"branch": "ticket", "level": "0", "wall_time_s": "2.0", "train_flops": "100", "dense_flops": "100"},
        {"branch": "ticket", "level": "1", "wall_time_s": "1.5", "train_flops": "20", "dense_flops": "100"},
        {"branch": "reinit", "level": "1", "wall_time_s": "1.0", "train_flops": "", "dense_flops": ""},
    ]
    summary = cost_summary(rows)
    assert list(summary) == ["ticket", "reinit"]
    assert summary["ticket"] == {"jobs": 2, "counted": 2, "wall_time_s": 3.5, "train_flops": 120, "dense_flops": 200}
    assert summary["reinit"]["train_flops"] is None
    lines = cost_table(rows).splitlines()
    assert lines[3].split()[-3:] == ["120", "200", "60.0%"] and lines[4].split()[-3:] == ["-", "-", "-"]


def test_the_cost_table_says_when_older_jobs_have_no_flops():
    from ticketlab.report.tables import cost_table

    rows = [
        {"branch": "ticket", "wall_time_s": "1.0", "train_flops": "", "dense_flops": ""},
        {"branch": "ticket", "wall_time_s": "2.0", "train_flops": "50", "dense_flops": "100"},
    ]
    text = cost_table(rows)
    assert "2 (1 with FLOPs)" in text and "50.0%" in text and "count in the wall time only" in text
    assert "(1 with FLOPs)" not in cost_table(rows[1:])


def test_report_out_without_html_is_refused_not_ignored(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip().endswith("names the HTML file; add --html")
    assert not (tmp_path / "r.html").exists()
