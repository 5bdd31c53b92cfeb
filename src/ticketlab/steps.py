"""Training lengths and points in training, written ``500it`` or ``3ep``.

A :class:`Step` is parsed once at the boundary (CLI, config file) and turned into
an iteration count only where the number of iterations per epoch is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ticketlab.errors import TicketlabError

_STEP = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


@dataclass(frozen=True)
class Step:
    """A point in training: ``value`` iterations (``it``) or epochs (``ep``)."""

    value: int
    unit: str  # "it" or "ep"

    @classmethod
    def parse(cls, text: str | int | Step) -> Step:
        """Parse ``"500it"`` / ``"3ep"``; a bare integer means iterations."""
        if isinstance(text, Step):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            if text < 0:
                raise TicketlabError(f"a step cannot be negative, got {text}")
            return cls(text, "it")
        match = _STEP.match(str(text))
        if not match:
            raise TicketlabError(
                f"malformed step {text!r}: write a whole number followed by 'it' "
                "(iterations) or 'ep' (epochs), e.g. '500it' or '3ep'"
            )
        return cls(int(match.group(1)), match.group(2))

    def iterations(self, iterations_per_epoch: int) -> int:
        """The step as an iteration count."""
        return self.value if self.unit == "it" else self.value * iterations_per_epoch

    def __str__(self) -> str:
        return f"{self.value}{self.unit}"
