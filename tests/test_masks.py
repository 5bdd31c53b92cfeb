"""Mask algebra: save/load, apply, subset, Hamming distance, density, and the checks on a mask."""

import pytest
import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.store import save_tensors


def test_mask_save_load_roundtrip_and_apply(tmp_path):
    model = nn.Linear(6, 3)
    mask = {"weight": torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) < 0.5}
    M.save_mask(tmp_path / "m.safetensors", mask)
    back = M.load_mask(tmp_path / "m.safetensors")
    assert torch.equal(back["weight"], mask["weight"])
    M.apply_mask(model, back)
    assert bool((model.weight[~mask["weight"]] == 0).all())
    assert M.hamming(mask, back) == 0.0 and M.density(mask) == int(mask["weight"].sum()) / 18


def test_counts_subset_and_hamming_golden():
    old = {"a": torch.tensor([True, True, False, True]), "b": torch.tensor([True, False])}
    new = {"a": torch.tensor([True, False, False, True]), "b": torch.tensor([False, False])}
    assert (M.count(old), M.size(old), M.density(old)) == (4, 6, 4 / 6)
    assert M.layer_densities(new) == {"a": 0.5, "b": 0.0}
    assert M.is_subset(new, old) and not M.is_subset(old, new)
    assert M.hamming(old, new) == 2 / 6  # they differ on a[1] and b[0]


def test_a_mask_of_another_model_or_of_numbers_is_refused(tmp_path):
    model = nn.Linear(4, 2)
    with pytest.raises(TicketlabError, match="which the model does not have"):
        M.check_mask(model, {"fc.weight": torch.ones(2, 4, dtype=torch.bool)})
    with pytest.raises(TicketlabError, match=r"has shape \(4, 2\), the parameter \(2, 4\)"):
        M.check_mask(model, {"weight": torch.ones(4, 2, dtype=torch.bool)})
    save_tensors(tmp_path / "floats.safetensors", {"weight": torch.ones(2, 4)})
    with pytest.raises(TicketlabError, match="is not a mask"):
        M.load_mask(tmp_path / "floats.safetensors")
