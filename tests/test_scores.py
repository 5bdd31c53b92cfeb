"""Golden tests of every after-training criterion on 4-element tensors, and the criteria inside IMP."""

import pytest
import torch
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.config import CRITERIA
from ticketlab.data import load_dataset
from ticketlab.imp import registry_problem, run_imp
from ticketlab.pruning import prune
from ticketlab.scores import AFTER_TRAINING, after_training
from ticketlab.store import JobDir

W0 = {"w": torch.tensor([0.5, -0.1, 0.3, -0.8])}  # at the start of the level
WT = {"w": torch.tensor([0.2, 0.9, -0.4, -1.0])}  # at its end


def keep_two(criterion: str, seed: int = 0, w0=W0, wt=WT) -> list[int]:
    """Indices the criterion keeps when half of the four weights go."""
    scores = after_training(criterion, w0, wt, ["w"], seed)
    mask = prune(scores, {"w": torch.ones(4, dtype=torch.bool)}, [(("w",), 0.5)])
    return mask["w"].nonzero().flatten().tolist()


@pytest.mark.parametrize(
    "criterion, kept",
    [
        ("large_final", [1, 3]),  # |w_T| = .2 .9 .4 1.0
        ("small_final", [0, 2]),
        ("large_init", [0, 3]),  # |w_0| = .5 .1 .3 .8
        ("small_init", [1, 2]),
        # ranks of |w_0|: 2 0 1 3; of |w_T|: 0 2 1 3; minimum: 0 0 1 3 -> keep 3 and 2
        ("large_init_large_final", [2, 3]),
        ("magnitude_increase", [1, 3]),  # -.3 .8 .1 .2
        ("movement", [1, 2]),  # .3 1.0 .7 .2
        ("large_final_same_sign", [0, 3]),  # same sign: 0 and 3 only
        ("large_final_diff_sign", [1, 2]),  # flipped: 1 and 2
    ],
)
def test_golden_scores(criterion, kept):
    assert keep_two(criterion) == kept


def test_small_init_small_final_golden():
    w0, wt = {"w": torch.tensor([0.1, 0.2, 0.3, 0.4])}, {"w": torch.tensor([0.15, -0.35, 0.25, 0.05])}
    # ranks of -|w_0|: 3 2 1 0; of -|w_T|: 2 0 1 3; minimum: 2 0 1 0 -> keep 0 and 2
    assert keep_two("small_init_small_final", w0=w0, wt=wt) == [0, 2]


def test_random_is_seeded_and_the_registry_matches_the_config():
    assert keep_two("random", 1) == keep_two("random", 1)
    assert len({tuple(keep_two("random", s)) for s in range(10)}) > 1
    assert tuple(AFTER_TRAINING) == CRITERIA


def test_excluded_weights_go_first_but_counts_stay_exact():
    # only weight 0 and 3 kept their sign; asking to keep three keeps both plus one excluded weight
    scores = after_training("large_final_same_sign", W0, WT, ["w"])
    mask = prune(scores, {"w": torch.ones(4, dtype=torch.bool)}, [(("w",), 0.25)])
    assert int(mask["w"].sum()) == 3 and mask["w"][0] and mask["w"][3]


@pytest.mark.parametrize("criterion", ["small_final", "movement", "random", "large_final_diff_sign"])
def test_criteria_drive_imp_with_exact_shrinking_masks(criterion, tmp_path):
    data = load_dataset("synthetic")
    cfg = tiny_config(prune={"criterion": criterion}, imp={"levels": 2, "baselines": (), "rewind": "5it"})
    run_imp(cfg, registry_problem(cfg, data), tmp_path / criterion)
    default = tiny_config(imp={"levels": 2, "baselines": (), "rewind": "5it"})
    run_imp(default, registry_problem(default, data), tmp_path / "magnitude")

    def masks(path):
        return [M.load_mask(JobDir(path, 0, lv, "ticket").path.parent / "mask.safetensors") for lv in range(3)]

    ours, magnitude = masks(tmp_path / criterion), masks(tmp_path / "magnitude")
    for level in (1, 2):
        assert M.is_subset(ours[level], ours[level - 1])
        assert M.count(ours[level]) == M.count(magnitude[level])  # the same counts per layer...
        assert M.hamming(ours[level], magnitude[level]) > 0  # ...but other weights
