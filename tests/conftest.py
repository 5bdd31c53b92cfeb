"""Shared tiny settings: a synthetic dataset and a small MLP, so IMP runs in about a second."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ticketlab.config import ExperimentConfig, from_dict

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def tiny_config(**sections) -> ExperimentConfig:
    base = {
        "data": {"dataset": "synthetic"},
        "model": {"model": "mlp", "widths": (32, 16)},
        "train": {"optimizer": "adam", "lr": 1e-2, "batch_size": 50, "steps": "60it", "eval_every": "20it"},
        "prune": {"strategy": "layerwise", "fraction": 0.5, "output_fraction": 0.25},
        "imp": {"levels": 2},
    }
    for name, values in sections.items():
        base[name].update(values)
    return from_dict(base)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Share one dataset cache across the session, never the user's home directory.
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("TICKETLAB_CACHE", os.environ.get("TICKETLAB_TEST_CACHE", str(cache)))
