"""Disjoint tickets: each round searches only the weights no earlier ticket holds."""

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.disjoint import disjoint
from ticketlab.errors import TicketlabError
from ticketlab.store import JobDir


def test_disjoint_tickets_share_no_weights_and_each_round_starts_without_the_earlier_ones(tmp_path, capsys):
    cfg = tiny_config(imp={"levels": 2, "baselines": ()})
    where, rows = disjoint(cfg, 3, out=tmp_path)
    masks = [
        M.load_mask(JobDir(where / f"round_{i}", 0, 2, "ticket").path.parent / "mask.safetensors") for i in range(3)
    ]
    starts = [
        M.load_mask(JobDir(where / f"round_{i}", 0, 0, "ticket").path.parent / "mask.safetensors") for i in range(3)
    ]
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
        disjoint(tiny_config(imp={"one_shot": True}), 2, out=tmp_path)
