"""Label noise (He et al. 2022's sparse double descent setting): exactly the asked share, seeded, training only."""

import pytest
import torch

from ticketlab.config import from_dict
from ticketlab.data import load_configured
from ticketlab.errors import TicketlabError
from ticketlab.label_noise import flip_labels


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 0.5])
def test_exactly_the_asked_share_changes_to_another_class(share):
    y = torch.arange(1000) % 10
    noisy = flip_labels(y, share, seed=3)
    changed = noisy != y
    assert int(changed.sum()) == round(share * 1000)  # every chosen label moves to a different class
    assert noisy.dtype == torch.int64 and int(noisy.min()) >= 0 and int(noisy.max()) <= 9


def test_the_same_seed_flips_the_same_labels_and_another_seed_others():
    y = torch.arange(500) % 5
    assert torch.equal(flip_labels(y, 0.2, seed=1), flip_labels(y, 0.2, seed=1))
    assert not torch.equal(flip_labels(y, 0.2, seed=1), flip_labels(y, 0.2, seed=2))


def test_new_classes_are_spread_over_the_other_classes():
    y = torch.tensor([0, 3, 8, 9]).repeat(5000)  # classes 0, 3, 8, 9 present (like modular's answers among tokens)
    noisy = flip_labels(y, 0.6, seed=0)
    changed = noisy != y
    assert set(noisy.tolist()) == {0, 3, 8, 9}  # new labels are classes present, never others
    moved_from_0 = torch.bincount(noisy[changed & (y == 0)], minlength=10)
    assert moved_from_0[0] == 0 and all(abs(int(moved_from_0[c]) - 1000) < 150 for c in (3, 8, 9))


def test_configured_noise_touches_training_labels_only():
    clean = load_configured(from_dict({"data": {"dataset": "synthetic", "val_size": 200}}).data)
    noisy = load_configured(from_dict({"data": {"dataset": "synthetic", "val_size": 200, "label_noise": 0.2}}).data)
    assert int((noisy.train.y != clean.train.y).sum()) == round(0.2 * len(clean.train))
    assert torch.equal(noisy.val.y, clean.val.y) and torch.equal(noisy.test.y, clean.test.y)
    assert torch.equal(noisy.train.x, clean.train.x)


def test_bad_noise_is_a_one_line_error():
    with pytest.raises(TicketlabError, match="label_noise must be in \\[0, 1\\)"):
        from_dict({"data": {"label_noise": 1.0}})
    with pytest.raises(TicketlabError, match="one class label per example"):
        flip_labels(torch.zeros(4, 3, dtype=torch.long), 0.5)


def test_modular_noise_keeps_labels_among_the_answers():
    cfg = from_dict({"data": {"dataset": "modular", "modulus": 7, "train_fraction": 0.6, "label_noise": 0.3}})
    data = load_configured(cfg.data)
    assert int(data.train.y.max()) < 7 and data.num_classes == 9  # 0..6 answers; 7, 8 are the op and = tokens
