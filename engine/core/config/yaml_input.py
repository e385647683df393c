"""Reading config files and ``--set`` values: YAML 1.2 with limits checked while parsing."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from engine.core.config.echo import (
    _clip,
    _key_text,
    _show,
)
from engine.core.config.schema import (
    ConfigError,
    ExperimentConfig,
)
from engine.core.config.validation import deep_merge, validate_config

# Limits on config input. A full config is about 3 KB, ~300 YAML nodes and 4 levels deep;
# these bounds are far above that and keep a hostile file from costing more than a fraction
# of a second or a few MB (the YAML parser is pure Python: ~40 µs per node).
MAX_CONFIG_BYTES = 256 * 1024
MAX_SET_CHARS = 64 * 1024
MAX_DEPTH = 20
MAX_NODES = 5_000


_STR_TAG = "tag:yaml.org,2002:str"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
# At most 18 digits: Python refuses to parse very long integers (a ValueError, not YAML's).
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,17})\Z")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?\Z")
_SPECIAL_FLOAT = re.compile(r"[-+]?\.(?:inf|Inf|INF)\Z|\.(?:nan|NaN|NAN)\Z")


def _plain_scalar_tag(value: str) -> str:
    """The type of an unquoted YAML value, as YAML 1.2 reads it: null, true/false, a decimal
    integer, a float (``3e-3`` included) or text. YAML 1.1 (PyYAML's default) would read
    ``0x10`` as 16, ``010`` as 8, ``1:30`` as 90 and ``no`` as false; here they stay text, so
    a number or true/false field refuses them instead of taking a surprising value."""
    if value in _NULLS:
        return "tag:yaml.org,2002:null"
    if value in _BOOLS:
        return "tag:yaml.org,2002:bool"
    if _INT.match(value):
        return "tag:yaml.org,2002:int"
    if _FLOAT.match(value) or _SPECIAL_FLOAT.match(value):
        return "tag:yaml.org,2002:float"
    return _STR_TAG


class _Refused(yaml.MarkedYAMLError):
    """A YAML construct a config has no use for, found while composing."""


def _refused(problem: str, at: yaml.Event | yaml.Node) -> _Refused:
    return _Refused(problem=problem, problem_mark=at.start_mark)


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the checks made while composing, so that nothing big is
    built: no anchors or aliases (a few hundred bytes of them expand to gigabytes), no tags,
    keys are unique names, at most :data:`MAX_DEPTH` levels and :data:`MAX_NODES` values.
    Plain values are typed by :func:`_plain_scalar_tag`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._keys: list[str] = []

    def resolve(self, kind: type[yaml.Node], value: str | None,
                implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0] and value is not None:
            return _plain_scalar_tag(value)
        return super().resolve(kind, value, implicit)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _refused("anchors and aliases (&name, *name) are not allowed in a config",
                           event)
        if getattr(event, "tag", None) is not None:
            raise _refused(f"YAML tags ({_clip(event.tag, 40)}) are not allowed in a config",
                           event)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _refused(f"more than {MAX_NODES} values (a config has a few hundred)",
                           event)
        if isinstance(event, yaml.ScalarEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _refused(f"nested more than {MAX_DEPTH} levels deep", event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        start = self.get_event()
        node = yaml.MappingNode(self.resolve(yaml.MappingNode, None, start.implicit), [],
                                start.start_mark, None, flow_style=start.flow_style)
        first_seen: dict[str, yaml.Mark] = {}
        while not self.check_event(yaml.MappingEndEvent):
            key = self.compose_node(node, None)
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR_TAG:
                raise _refused("a key must be a name (not a number, true/false, null, list "
                               "or mapping)", key)
            path = _key_text(".".join([*self._keys, key.value]))
            if key.value in first_seen:
                raise _refused(f"duplicate key {path} (first given on line "
                               f"{first_seen[key.value].line + 1})", key)
            first_seen[key.value] = key.start_mark
            self._keys.append(key.value)
            try:
                value = self.compose_node(node, key)
            finally:
                self._keys.pop()
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node


def _load_yaml(text: str) -> Any:
    """One YAML document → Python values, through :class:`_ConfigLoader`."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(err: Exception, where: bool = True) -> str:
    """A YAML error as one short line (PyYAML's own message spans several and quotes input)."""
    if isinstance(err, yaml.MarkedYAMLError):
        text = err.problem or err.context or "invalid YAML"
        if err.problem and err.context:
            text = f"{err.problem} ({err.context})"
        mark = err.problem_mark or err.context_mark
        if where and mark is not None:
            text += f" at line {mark.line + 1}, column {mark.column + 1}"
        return _clip(text, 200)
    if isinstance(err, yaml.reader.ReaderError):
        char = err.character if isinstance(err.character, str) else chr(err.character)
        return f"unacceptable character {char!r} at position {err.position}"
    return _clip(str(err), 200)


def _yaml_kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number",
            bool: "true/false"}.get(type(value), type(value).__name__)


_KEY_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_set(expr: str) -> dict[str, Any]:
    """``"federation.rounds=5"`` → ``{"federation": {"rounds": 5}}`` (the value is YAML, read
    as :func:`load_config_file` reads a file)."""
    if len(expr) > MAX_SET_CHARS:
        raise ConfigError(f"--set {_show(expr)}: {len(expr)} characters, at most "
                          f"{MAX_SET_CHARS} are allowed")
    if "=" not in expr:
        raise ConfigError(f"--set {_show(expr)}: expected KEY.PATH=VALUE, e.g. "
                          "federation.rounds=5")
    key, raw = expr.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip():
        raise ConfigError(f"--set {_show(expr)}: empty key")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"--set {_show(key)}: more than {MAX_DEPTH} levels of keys")
    bad = next((p for p in parts if not _KEY_PART.match(p)), None)
    if bad is not None:
        raise ConfigError(f"--set {_show(key.strip())}: {_show(bad)} is not a key name "
                          "(letters, digits and _, joined by dots)")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"--set {_show(expr)}: value is not valid YAML "
                          f"({_yaml_problem(err, where=False)})") from None
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON config file into a dict; a clear one-line error on anything else
    (size over :data:`MAX_CONFIG_BYTES`, not UTF-8, bad or refused YAML, not a mapping)."""
    p = Path(path)
    name = _show(str(p))
    if "\x00" in str(p):
        raise ConfigError(f"config file {name} is not a usable path (a NUL character)")
    try:
        problem = ("does not exist" if not p.exists() else
                   "is not a regular file" if not p.is_file() else None)
        if problem is None:
            with open(p, "rb") as fh:  # at most one byte past the limit, whatever it holds
                raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"config file {name} cannot be read "
                          f"({err.strerror or type(err).__name__})") from None
    if problem is not None:
        raise ConfigError(f"config file {name} {problem}")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                          "a config is a few KB of keys")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {name} is not UTF-8 text (byte "
                          f"0x{raw[err.start]:02x} at offset {err.start})") from None
    try:
        data = _load_yaml(text)
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"config file {name} is not valid YAML: {_yaml_problem(err)}") from None
    if data is None:
        raise ConfigError(f"config file {name} is empty; give a mapping of keys, e.g. "
                          "federation: {rounds: 5}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name} must hold a mapping of keys (e.g. federation: "
                          f"{{rounds: 5}}), not {_yaml_kind(data)}")
    return data


def config_from(base: dict[str, Any] | None = None, file: str | Path | None = None,
                sets: list[str] | tuple[str, ...] = (),
                overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults ← ``base`` (e.g. a preset's overrides) ← config file ← overrides ← ``--set``
    expressions, then validate (:func:`engine.orchestration.presets.build_config` starts
    from a named preset)."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    if file:
        data = deep_merge(data, load_config_file(file))
    if overrides:
        data = deep_merge(data, overrides)
    for expr in sets:
        data = deep_merge(data, parse_set(expr))
    return validate_config(data)
