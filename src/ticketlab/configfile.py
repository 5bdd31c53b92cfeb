"""Reading config files (YAML or JSON) into a mapping, safely: whatever bytes a file holds, the answer is a
mapping or one line of error, quickly and in little memory (size cap, UTF-8 only, no YAML aliases).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ticketlab.config import upgrade
from ticketlab.config_fields import short_repr
from ticketlab.errors import TicketlabError

# Config files are a few hundred bytes. Pure-Python YAML reads about 1 MiB a second, and a value list costs far
# more per byte, so anything much larger than a config, or nested or long like no config, is refused early.
MAX_FILE_BYTES = 64 << 10
MAX_VALUES = 2000  # YAML nodes: sections, keys and values
MAX_DEPTH = 8  # a config nests three deep: section, field, list


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML as configs need it. Anchors and aliases are refused before any node is shared, so a few
    hundred bytes of nested aliases cannot expand into gigabytes; nesting and node count are capped before
    the pure-Python scanner and composer can spend seconds on them."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nodes, self.depth = 0, 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise TicketlabError(f"nested more than {MAX_DEPTH} deep (line {self.line + 1}); is it a config file?")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1
            raise TicketlabError(f"YAML anchors and aliases (& and *, line {line}) are not allowed; write values out")
        self.nodes, self.depth = self.nodes + 1, self.depth + 1
        if self.nodes > MAX_VALUES or self.depth > MAX_DEPTH:
            line = event.start_mark.line + 1
            raise TicketlabError(f"more than {MAX_VALUES} values, or nested more than {MAX_DEPTH} deep (line {line})")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:  # YAML lets the last of two equal keys win silently; a config should not
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                line = key_node.start_mark.line + 1
                raise TicketlabError(f"{short_repr(key)} is given twice (line {line}); keep one")
            seen.add(key if isinstance(key, str) else id(key_node))
        return super().construct_mapping(node, deep)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json keeps the last one silently)."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise TicketlabError(f"{short_repr(twice[0])} is given twice; keep one")
    return dict(pairs)


def _parse_error(e: Exception) -> str:
    """One line saying where a JSON or YAML file stops parsing."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno}, column {e.colno}"
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"{e.problem} at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
    return short_repr(" ".join(str(e).split()), 200)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested mapping (old ``one_shot`` / ``at_init`` keys as ``mode``).

    Refused with one line: files over MAX_FILE_BYTES, text that is not UTF-8, YAML anchors and aliases."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise TicketlabError(f"cannot read config file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise TicketlabError(f"config file {path} is over {MAX_FILE_BYTES >> 10} KiB: is it a config file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TicketlabError(
            f"config file {path} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
            "give a YAML or JSON file saved as UTF-8"
        ) from None
    if "\x00" in text:
        raise TicketlabError(f"config file {path} is not UTF-8 text (it holds NUL bytes); give a YAML or JSON file")
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            data = yaml.load(text, Loader=_ConfigLoader)
    except TicketlabError as e:
        raise TicketlabError(f"cannot parse config file {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- any parse failure is the user's file
        raise TicketlabError(f"cannot parse config file {path}: {_parse_error(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TicketlabError(f"config file {path} must hold a mapping of sections (data, model, train, ...)")
    return upgrade(data)
