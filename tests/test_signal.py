"""Signal propagation: the mean-field recursion (golden values by hand), the measured variance of a deep sparse ReLU
MLP against it, and ``ticketlab analyze RUN --signal`` on a tiny run."""

import csv

import pytest
import torch
from conftest import tiny_config
from torch import nn

from ticketlab.analysis.signal import COLUMNS, mean_field, propagation
from ticketlab.cli import main
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.imp import run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir


def test_mean_field_golden_three_layers():
    # q_1 = d_1 q0; q_{l+1} = d_{l+1} sigma_w^2 q_l / 2
    # He init (sigma_w^2 = 2): q1 = 1 * 4 = 4, q2 = 0.5 * 2 * 4 / 2 = 2, q3 = 0.25 * 2 * 2 / 2 = 0.5
    assert mean_field(4.0, [1.0, 0.5, 0.25]) == pytest.approx([4.0, 2.0, 0.5])
    # sigma_w^2 = 1: q1 = 4, q2 = 0.5 * 1 * 4 / 2 = 1, q3 = 0.25 * 1 * 1 / 2 = 0.125
    assert mean_field(4.0, [1.0, 0.5, 0.25], sigma_w2=1.0) == pytest.approx([4.0, 1.0, 0.125])
    # a sparse first layer scales the dense anchor: q1 = 0.5 * 3 = 1.5, q2 = 1 * 2 * 1.5 / 2 = 1.5
    assert mean_field(3.0, [0.5, 1.0]) == pytest.approx([1.5, 1.5])
    with pytest.raises(TicketlabError, match="densities"):
        mean_field(1.0, [1.5])


def _deep_mlp(depth=8, width=256, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(depth):
        lin = nn.Linear(width, width if i < depth - 1 else 10, bias=False)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        layers += [lin, nn.ReLU()] if i < depth - 1 else [lin]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("density", [1.0, 0.25])
def test_variance_ratio_between_layers_is_the_density(density):
    torch.set_num_threads(1)
    model = _deep_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)  # density < 1: keep that share of every layer, drawn at random
    mask = full if density == 1.0 else {n: torch.rand(m.shape, generator=g) < density for n, m in full.items()}
    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (512,), generator=torch.Generator().manual_seed(3))
    rows = propagation(model, mask, x, y)
    assert [r["layer"] for r in rows] == [f"{2 * i}.weight" for i in range(8)]  # forward order
    assert rows[0]["variance"] == pytest.approx(2 * density, rel=0.2)  # E[x^2] = 1, sigma_w^2 = 2
    for a, b in zip(rows, rows[1:]):
        assert b["variance"] / a["variance"] == pytest.approx(density, rel=0.2), (a["layer"], b["layer"])
        assert b["density"] == pytest.approx(density, rel=0.1)
    assert all(r["grad_norm"] > 0 for r in rows)
    # the caller's model is unchanged: weights (no mask applied, no gradients)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("imp")
    cfg = tiny_config(imp={"levels": 2, "rewind": "10it", "replicates": 2})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), path, batch_jobs="off")
    return path


def test_cli_prints_the_table_and_writes_signal_csv(run, capsys):
    assert main(["analyze", str(run), "--signal", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Signal propagation at the rewind point, level 1" in out and "level 2" in out and "mean-field" in out
    with open(run / "signal.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert {r["level"] for r in rows} == {"1", "2"}
    replicates = RunDir(run).config().imp.replicates
    assert {r["replicate"] for r in rows} == {str(i) for i in range(replicates)}  # every replicate measured
    assert f"mean over n={replicates} replicates" in out
    assert (run / "signal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in rows:
        assert float(r["variance_ticket"]) > 0 and float(r["variance_random"]) > 0 and float(r["mean_field"]) > 0
        assert 0 < float(r["density"]) < 1
    # pruning 50% a level: level 2's layers keep about half of level 1's
    one = [float(r["density"]) for r in rows if r["level"] == "1"]
    two = [float(r["density"]) for r in rows if r["level"] == "2"]
    assert all(b < a for a, b in zip(one, two))


def test_cli_bad_levels_one_line_exit_2(run, capsys):
    assert main(["analyze", str(run), "--signal", "--levels", "7", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--levels" in err
    assert main(["analyze", str(run), "--signal", "--levels", "x"]) == 2


def test_sparse_aware_without_signal_is_refused_in_one_line(run, capsys):
    assert main(["analyze", str(run), "--sparse-aware"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sparse-aware" in err and "add --signal" in err and "\n" not in err


def test_analyze_refuses_two_studies_at_once_and_epsilon_without_the_rewind_model(run, capsys):
    assert main(["analyze", str(run), "--signal", "--capacity"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--signal and --capacity" in err and "one of them" in err and "\n" not in err
    assert main(["analyze", str(run), "--capacity", "--epsilon", "0.02"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--epsilon" in err and "add --rewind-model" in err and "\n" not in err
    assert not (run / "capacity.csv").exists()  # refused before anything was computed


def test_sparse_aware_signal_of_a_structured_run_is_refused_in_one_line(tmp_path, capsys):
    cfg = tiny_config(prune={"units": "l1"}, imp={"levels": 1})
    run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path, batch_jobs="off")
    capsys.readouterr()
    assert main(["analyze", str(tmp_path), "--signal", "--sparse-aware", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--units" in err and "\n" not in err
    assert not (tmp_path / "signal_sparse_aware.csv").exists()
