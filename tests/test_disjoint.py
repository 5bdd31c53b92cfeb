"""Disjoint tickets: each round searches only the weights no earlier ticket holds."""

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.disjoint import disjoint
from ticketlab.errors import TicketlabError
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors


def test_disjoint_tickets_share_no_weights_and_each_round_starts_without_the_earlier_ones(tmp_path, capsys):
    cfg = tiny_config(imp={"levels": 2, "baselines": ()})
    where, rows = disjoint(cfg, 3, out=tmp_path)
    masks = [M.load_mask(RunDir(where / f"round_{i}").level(0, 2).mask) for i in range(3)]
    starts = [M.load_mask(RunDir(where / f"round_{i}").level(0, 0).mask) for i in range(3)]
    for i in range(3):
        for j in range(i):
            assert not any(bool((masks[i][n] & masks[j][n]).any()) for n in masks[i])
        taken = {n: torch.zeros_like(m) for n, m in masks[0].items()}
        for j in range(i):
            taken = {n: taken[n] | masks[j][n] for n in taken}
        assert all(torch.equal(starts[i][n], ~taken[n]) for n in taken)
        assert M.is_subset(masks[i], starts[i])
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[0]["forbidden"] == 0.0
    assert rows[2]["forbidden"] == pytest.approx(M.density(masks[0]) + M.density(masks[1]))
    capsys.readouterr()
    again = disjoint(cfg, 3, out=tmp_path)[1]  # resumes: nothing trains again
    assert again == rows and "test acc" not in capsys.readouterr().err


def test_disjoint_refuses_one_shot_pruning(tmp_path):
    with pytest.raises(TicketlabError, match="iterative pruning"):
        disjoint(tiny_config(imp={"mode": "one-shot"}), 2, out=tmp_path)


def test_reinit_mode_redraws_earlier_tickets_weights_and_keeps_them_available(tmp_path):
    cfg = tiny_config(imp={"levels": 2, "baselines": ()})
    where, rows = disjoint(cfg, 2, exclude="reinit", out=tmp_path)
    first = M.load_mask(RunDir(where / "round_0").level(0, 2).mask)
    inits = [load_tensors(RunDir(where / f"round_{i}").level(0, 0).init) for i in (0, 1)]
    start = M.load_mask(RunDir(where / "round_1").level(0, 0).mask)
    assert all(bool(m.all()) for m in start.values())  # nothing forbidden
    for n, m in first.items():
        assert torch.equal(inits[1][n][~m], inits[0][n][~m])  # the rest of theta_0 untouched
        assert bool((inits[1][n][m] != inits[0][n][m]).all())  # the ticket's weights re-drawn
    assert rows[1]["overlap"] == M.count(
        {n: first[n] & M.load_mask(RunDir(where / "round_1").level(0, 2).mask)[n] for n in first}
    )
