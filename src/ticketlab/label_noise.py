"""Symmetric label noise for the sparse-double-descent setting (He et al., ICML 2022).

A share p of the training labels is replaced by a different class, drawn uniformly from the other classes. Exactly
round(p * N) labels change, chosen by a seeded permutation, so the noisy training set is a function of the data, p
and the seed: every replicate and every level of a run see the same noisy labels. Validation and test labels stay
clean.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ticketlab.data import Dataset, Split
from ticketlab.errors import TicketlabError

NOISE_SEED = 0  # the noisy labels of a dataset at share p are fixed, as in He et al.


def flip_labels(y: torch.Tensor, share: float, seed: int = NOISE_SEED) -> torch.Tensor:
    """``y`` (N,) int64 with exactly round(share * N) entries changed to another of the classes present in ``y``,
    uniformly among them (so `modular`'s labels stay answers, never its operator tokens); which entries change and to
    what follow ``seed``. A new tensor on ``y``'s device.

    Raises TicketlabError for a share outside [0, 1), labels that are not one class per example, or fewer than two
    classes present."""
    if not 0.0 <= share < 1.0:
        raise TicketlabError(f"label_noise must be in [0, 1), got {share}")
    if y.dim() != 1:
        raise TicketlabError(
            f"label noise needs one class label per example; this data has labels of shape {tuple(y.shape[1:])} "
            "per example (a language model's next tokens). Leave --label-noise at 0"
        )
    classes = torch.unique(y.cpu())  # sorted
    if len(classes) < 2:
        raise TicketlabError(f"label noise needs at least 2 classes in the training labels, they hold {len(classes)}")
    g = torch.Generator().manual_seed(seed)
    count = round(share * len(y))
    which = torch.randperm(len(y), generator=g)[:count]
    shift = torch.randint(1, len(classes), (count,), generator=g)  # never 0: the new class differs from the old
    noisy = y.cpu().clone()
    position = torch.searchsorted(classes, noisy[which])  # each chosen label's index among the classes
    noisy[which] = classes[(position + shift) % len(classes)]
    return noisy.to(y.device)


def with_label_noise(data: Dataset, share: float, seed: int = NOISE_SEED) -> Dataset:
    """``data`` with the share ``share`` of its training labels flipped (:func:`flip_labels`); unchanged for 0."""
    if share == 0:
        return data
    train = data.train
    return replace(data, train=Split(train.x, flip_labels(train.y, share, seed), train.scale, train.shift))
