"""Validation: a dict to :class:`ExperimentConfig`, or one line naming each bad key."""

from __future__ import annotations

import copy
import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.core.config.echo import (
    MAX_ECHO,
    MAX_MESSAGE,
    _clip,
    _key_text,
    _show,
)
from engine.core.config.schema import (
    ConfigError,
    ExperimentConfig,
)

# What a field expects, by pydantic error type (strict mode), in the config's words.
_EXPECTED = {
    "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "text",
    "list_type": "a list", "model_type": "a mapping of keys", "dict_type": "a mapping of keys",
    "finite_number": "a finite number (not .inf or .nan)",
}
_NUMBER_WANTED = {"a whole number", "a number", "a finite number (not .inf or .nan)"}


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _error_key(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """A pydantic error location → the dotted config key, and the section that holds it
    (pydantic's names of union members, e.g. ``list[int]``, are not keys and are dropped)."""
    model: type[BaseModel] | None = ExperimentConfig
    holder: type[BaseModel] | None = None
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            if parts:
                parts[-1] += f"[{part}]"
        elif model is not None:
            holder = model
            parts.append(_key_text(part))
            field = model.model_fields.get(part)
            model = _submodel(field.annotation) if field else None
    return ".".join(parts), holder


def _unknown_key(key: str, name: Any, holder: type[BaseModel] | None) -> str:
    fields = list(holder.model_fields) if holder else []
    close = difflib.get_close_matches(str(name)[:MAX_ECHO], fields, n=1)
    if close:
        return f"{key}: unknown key (did you mean {close[0]}?)"
    return f"{key}: unknown key (allowed here: {_clip(', '.join(fields), 160)})"


def _type_hint(value: Any, wanted: set[str]) -> str:
    if isinstance(value, bool) and wanted & _NUMBER_WANTED:
        return " (true/false is not a number)"
    if isinstance(value, str) and wanted & _NUMBER_WANTED:
        return " (text is not a number; write e.g. 16 or 0.003)"
    if isinstance(value, int | float) and not isinstance(value, bool) and "text" in wanted:
        return " (quote it to give text)"
    return ""


def _field_message(key: str, errors: list[dict[str, Any]]) -> str:
    """One field's errors (several for a union type) as one sentence."""
    rules: list[str] = []
    wanted: set[str] = set()
    for e in errors:
        if e["type"] in _EXPECTED:
            wanted.add(_EXPECTED[e["type"]])
            rule = f"should be {_EXPECTED[e['type']]}"
        else:
            msg = _clip(e["msg"].removeprefix("Value error, "), 160)
            rule = ("should be " + msg.removeprefix("Input should be ")
                    if msg.startswith("Input should be ") else msg[:1].lower() + msg[1:])
        if rule not in rules:
            rules.append(rule)
    if all(r.startswith("should be ") for r in rules):
        text = "should be " + ", or ".join(r.removeprefix("should be ") for r in rules)
    else:
        text = "; ".join(rules)
    value = errors[0].get("input")
    return f"{key} = {_show(value)} is not allowed: {text}{_type_hint(value, wanted)}"


def _format_validation_error(err: ValidationError) -> str:
    fields: dict[str, list[dict[str, Any]]] = {}
    messages: list[str] = []
    for e in err.errors(include_url=False):
        key, holder = _error_key(e["loc"])
        if e["type"] == "extra_forbidden":
            messages.append(_unknown_key(key, e["loc"][-1], holder))
        elif e["type"] == "value_error" or not key:
            messages.append(_clip(e["msg"].removeprefix("Value error, "), MAX_MESSAGE))
        else:
            if key not in fields:
                messages.append(key)  # placeholder, filled in below, keeps the order
            fields.setdefault(key, []).append(e)
    # A list given to a "name or list" field (server_view_rounds) fails both ways; when its
    # items are what is wrong, the "should be 'all', 'last' or 'none'" half is noise.
    messages = [m for m in messages if not (m in fields and any(
        k.startswith(m + "[") for k in fields))]
    messages = [_field_message(m, fields[m]) if m in fields else m for m in messages]
    shown = "; ".join(messages[:3])
    more = f" (and {len(messages) - 3} more)" if len(messages) > 3 else ""
    return _clip(f"invalid experiment config: {shown}{more}", MAX_MESSAGE)


def validate_config(data: dict[str, Any]) -> ExperimentConfig:
    """Dict → :class:`ExperimentConfig`, or :class:`ConfigError` naming the bad keys."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
