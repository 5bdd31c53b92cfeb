"""`ticketlab criteria`: every criterion pruned once to a few densities, then trained, gathered in one table."""

import pytest
from test_cli import TINY, ticketlab

from ticketlab.store import read_csv


def test_criteria_comparison_end_to_end_and_its_report(tmp_path):
    out = tmp_path / "out"
    args = ["--criteria", "large_final,random,synflow", "--densities", "0.5,0.1", "--rounds", "3"]
    proc = ticketlab("criteria", *TINY, *args, "--out", str(out), check=True)
    lines = proc.stdout.splitlines()
    assert "one replicate (n=1)" in lines[0] and lines[1].startswith("dense network: ")
    table = {ln.split()[0]: ln.split()[1:] for ln in lines[2:7]}
    assert table["criterion"] == ["mode", "50%", "10%"]
    assert table["large_final"][0] == "one-shot" and table["synflow"][0] == "at-init"
    where = next(out.glob("criteria-*"))
    rows = read_csv(where / "criteria.csv")
    assert {(r["criterion"], r["target_density"]) for r in rows if r["criterion"] != "dense"} == {
        (c, d) for c in ("large_final", "random", "synflow") for d in ("0.5", "0.1")
    }
    assert all(abs(float(r["density"]) - float(r["target_density"])) < 1e-3 for r in rows)
    assert (where / "criteria.png").stat().st_size > 10_000
    # rerunning resumes: every run is complete, so nothing trains again and the table is the same
    again = ticketlab("criteria", *TINY, *args, "--out", str(out), check=True)
    assert again.stdout == proc.stdout and "test acc" not in again.stderr
    report = ticketlab("report", str(where), check=True)
    assert report.stdout.splitlines()[:7] == lines[:7]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--criteria", "magnitude"], "unknown criteria"),
        (["--densities", "0.1,x"], "cannot read"),
        (["--densities", "1.5"], "densities must be in (0, 1)"),
        (["--criteria", "movement", "--mode", "at-init"], "cannot prune at init"),
        (["--units", "l1"], "drop --units"),
    ],
)
def test_criteria_bad_input(tmp_path, args, message):
    proc = ticketlab("criteria", *TINY, *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
