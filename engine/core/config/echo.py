"""Echoing input in messages: cut to a short line, control characters shown, never a dump."""

from __future__ import annotations

import difflib
import re
import reprlib
from typing import Any

# Echoed input is cut to this many characters, so a message stays one short line.
MAX_ECHO = 80

# Longest message: a few rule sentences, never a dump of the input.
MAX_MESSAGE = 500

_ECHO = reprlib.Repr()
_ECHO.maxstring = _ECHO.maxother = MAX_ECHO
_ECHO.maxlist = _ECHO.maxtuple = 12
_ECHO.maxdict = 6
_ECHO.maxlevel = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` on one line of at most ``limit`` characters."""
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any) -> str:
    """A value as a user would write it, cut short: echoing a hostile input in full (a huge
    string or structure) would make the error itself the problem."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _clip(_ECHO.repr(value))


def _key_text(key: Any) -> str:
    """A key as written when it is a short printable name, else quoted and cut short."""
    if isinstance(key, str) and len(key) <= MAX_ECHO and key.isprintable():
        return key
    return _show(key)


def _has_control_chars(text: str) -> bool:
    return _CONTROL.search(text) is not None


# How much of a catalogue an "unknown name" message lists before pointing at `fedsct presets`.
MAX_LISTED = 150


def unknown_name(kind: str, name: Any, names: list[str]) -> str:
    """The one-line refusal of a name not in a catalogue (a preset, a sweep): the name cut
    short, the closest known name, and the known names, as many as fit a readable line."""
    close = difflib.get_close_matches(str(name)[:100], names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(names)
    if len(listed) > MAX_LISTED:
        listed = listed[:MAX_LISTED].rsplit(", ", 1)[0]
        listed += f", … ({len(names)} in all: `fedsct presets` lists them)"
    return f"unknown {kind} {_clip(repr(str(name)), 40)}{hint}; available: {listed}"
