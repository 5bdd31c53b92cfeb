"""How a config field is declared, checked and read: the machinery under :mod:`ticketlab.config`'s sections.

:func:`option` declares a field with its help, choices and run-hash metadata; the ``check``/``require`` helpers
give the one-line errors the sections raise in ``__post_init__``; :func:`coerce` turns a value from a config file
or a CLI flag into the field's type. Steps are parsed here, at the boundary, and nowhere later.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import field
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.steps import Step


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for quoting user values in one-line errors."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<a {type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-12:]} ({len(text)} characters)"


def option(default: Any, help: str, *, hash: bool = True, choices: tuple | None = None, since: int = 1) -> Any:
    """A config field. ``since``: the config version that added it; fields added after version 1 enter the
    run hash only when set away from their default, so a run made before they existed keeps its directory."""
    meta = {"help": help, "hash": hash, "choices": choices, "since": since}
    return field(default=default, metadata=meta)


def require(ok: bool, name: str, rule: str, value: Any) -> None:
    """Raise ``name must be RULE, got VALUE`` unless ``ok``."""
    if not ok:
        raise TicketlabError(f"{name} must be {rule}, got {short_repr(value)}")


def check_finite(**values: float) -> None:
    """Refuse NaN and infinities, by keyword name: ``check_finite(lr=self.lr)``."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise TicketlabError(f"{name} must be a finite number, got {short_repr(value)}")


def check_fraction(name: str, value: float | None) -> None:
    """Refuse a fraction outside (0, 1]; ``None`` (unset) passes."""
    require(value is None or 0.0 < value <= 1.0, name, "in (0, 1]", value)


def parse_step(name: str, value: Any) -> Step:
    """``value`` (text such as ``"500it"``, or a Step) as a Step; a malformed one is the user's error."""
    try:
        return Step.parse(value)
    except (TicketlabError, ValueError):  # ValueError: a number too long to read
        raise TicketlabError(
            f"{name}: malformed step {short_repr(value)}: write a whole number followed by 'it' (iterations) or "
            "'ep' (epochs), e.g. '500it' or '3ep'"
        ) from None


def set_steps(obj: Any, *names: str) -> None:
    """Parse a frozen section's step fields in place, so ``TrainConfig(steps="3ep")`` holds a Step too."""
    for name in names:
        object.__setattr__(obj, name, parse_step(name, getattr(obj, name)))


def parse_bool(value: Any) -> bool:
    """A bool, or its spelling in text; anything else is a ValueError."""
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    if not isinstance(value, bool):
        raise ValueError
    return value


def _text_step(name: str, value: Any) -> Step:
    """A step from a file or flag: text only, as before steps were typed (a bare number is refused)."""
    return parse_step(name, value if isinstance(value, Step) else str(value))


def coerce(tp: Any, where: str, value: Any) -> Any:
    """Turn a value from JSON/YAML/CLI text into type ``tp`` (a field's type, e.g. ``float | None``), or raise
    a clear error naming the field ``where`` (``"train.lr"``)."""
    optional = isinstance(tp, types.UnionType) and type(None) in tp.__args__
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        tp = next(a for a in tp.__args__ if a is not type(None))
    try:
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            if isinstance(value, str):
                value = [v for v in (p.strip() for p in value.split(",")) if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return tuple(_text_step(where, v) if inner is Step else inner(v) for v in value)
        if tp is Step:
            return _text_step(where, value)
        if tp is bool:
            return parse_bool(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError
        return tp(value)
    except (TypeError, ValueError, OverflowError):
        raise TicketlabError(f"{where}: cannot read {short_repr(value)} as {getattr(tp, '__name__', tp)}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Section-wise merge of two nested config mappings (override wins)."""
    out = {s: dict(base.get(s) or {}) for s in set(base) | set(override)}
    for section, values in override.items():
        if not isinstance(values, dict):
            raise TicketlabError(f"config section {short_repr(section)} must be a mapping")
        out[section].update(values)
    return out
