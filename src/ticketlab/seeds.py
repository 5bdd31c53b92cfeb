"""Seeds derived from what they are for, so every random draw of a run can be reproduced on its own.

A job's randomness (its initialisation, data order, random mask, augmentation) comes from a seed derived from
the base seed and the job's coordinates, never from a shared generator: a run resumed at any job, or a job
run alone or on another worker, draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A stable 60-bit seed from any parts, e.g. ``derive_seed(base_seed, replicate, level, "reinit")``."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


def generator(*parts: Any) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
