"""Load a funnel configuration file, refusing a bad one with file, line and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streams.core.config.model import FunnelConfig, LocatedError
from streams.errors import ConversionsError

MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NODES = 100_000

Location = tuple[str | int, ...]


class ConfigError(ConversionsError, ValueError):
    """A configuration file that cannot be used; str() reads `file:line: where: reason`."""

    def __init__(self, file: str, line: int | None, reason: str, where: str = "") -> None:
        self.file = file
        self.line = line
        self.reason = reason
        self.where = where
        position = f"{file}:{line}" if line is not None else file
        super().__init__(f"{position}: {where + ': ' if where else ''}{reason}")


MAX_DEPTH = 32

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML was built with it (a tenth of the pure parser's time); a file it
refuses is parsed again by the pure one, whose messages the errors quote."""


def _scalar(node: yaml.Node) -> Any:
    """A scalar node's value, as `yaml.safe_load` gives it (its tag was resolved when composed)."""
    return yaml.constructor.SafeConstructor().construct_object(node)


def _construct(node: yaml.Node, path: Location, lines: dict[Location, int]) -> Any:
    """Build plain Python values from a composed YAML node, noting the line of every path."""
    line = node.start_mark.line + 1
    lines[path] = line
    if len(lines) > MAX_CONFIG_NODES:
        raise ConfigError("", line, f"more than {MAX_CONFIG_NODES} values (alias bomb?)")
    if len(path) > MAX_DEPTH:
        raise ConfigError("", line, f"nested deeper than {MAX_DEPTH} levels (recursive alias?)")
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("", key_node.start_mark.line + 1, "mapping keys must be plain values")
            key = _scalar(key_node)
            if key in result:
                raise ConfigError("", key_node.start_mark.line + 1, f"duplicate key {key!r}")
            result[key] = _construct(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1  # a key's problems point at the key
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _line_for(loc: Location, lines: dict[Location, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return None


def _where(loc: Location) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _too_deep_line(text: str) -> int | None:
    """The line where flow brackets first nest deeper than `MAX_DEPTH`, for an error's position
    only (quoted brackets counted too: the file is already refused)."""
    depth = 0
    for number, line in enumerate(text.split("\n"), start=1):
        for char in line:
            depth += 1 if char in "[{" else -1 if char in "]}" else 0
            if depth > MAX_DEPTH:
                return number
    return None


def parse_config(text: str, file: str = "<config>") -> FunnelConfig:
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError(file, None, f"file larger than {MAX_CONFIG_BYTES} bytes")
    try:
        try:
            node = yaml.compose(text, Loader=_Loader)
        except yaml.YAMLError:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(file, line, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, f"invalid YAML: {exc}") from None
    except RecursionError:  # thousands of brackets deep: libyaml refuses them, the pure parser recurses
        raise ConfigError(file, _too_deep_line(text), f"nested deeper than {MAX_DEPTH} levels") from None
    if node is None:
        raise ConfigError(file, 1, "the file is empty")
    lines: dict[Location, int] = {}
    try:
        data = _construct(node, (), lines)
    except ConfigError as exc:
        raise ConfigError(file, exc.line, exc.reason) from None
    except yaml.MarkedYAMLError as exc:  # a tag no safe constructor knows (`!python/...`, `<<`)
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ConfigError(file, line, f"invalid YAML: {exc.problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            file, lines.get(()), "the top level must be a mapping (version, goals, funnels, ...)"
        )
    try:
        return FunnelConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and "[" in p))
        reason = first["msg"].removeprefix("Value error, ")
        located = (first.get("ctx") or {}).get("error")
        if isinstance(located, LocatedError):
            loc = (*loc, *located.loc)
            reason = str(located)
        if first["type"] == "extra_forbidden":
            reason = f"unknown key {loc[-1]!r}"
        elif first["type"] == "missing":
            reason = f"missing required key {loc[-1]!r}"
            loc = loc[:-1]
        count = exc.error_count()
        if count > 1:
            reason += f" (and {count - 1} more problem{'s' if count > 2 else ''})"
        raise ConfigError(file, _line_for(loc, lines), reason, _where(loc)) from None


def load_config(path: str | Path) -> FunnelConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, "no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(str(path), None, exc.strerror or str(exc)) from None
    return parse_config(text, str(path))
