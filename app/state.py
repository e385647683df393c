"""Session state that must outlive page switches and browser reloads.

Streamlit drops a widget's keyed value when the user leaves its page, and the whole
session on a reload, so settings live under a plain (non-widget) key and the run being
shown lives in the URL (``?run=<id>``) as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

SETTINGS_KEY = "fed_settings"
RUN_KEY = "current_run"


def persisted(widget: Callable[..., Any], label: str, name: str, default: Any,
              **kwargs: Any) -> Any:
    """Render ``widget`` whose value survives a trip to another page and back."""
    store: dict[str, Any] = st.session_state.setdefault(SETTINGS_KEY, {})
    key = f"w_{name}"
    if key not in st.session_state:
        value = store.get(name, default)
        options = kwargs.get("options")
        # A stored choice that is no longer offered would make the selectbox raise.
        st.session_state[key] = default if options is not None and value not in options else value
    value = widget(label, key=key, **kwargs)
    store[name] = value
    return value


def forget(*names: str) -> None:
    """Drop stored settings so their widgets start again from fresh defaults."""
    store: dict[str, Any] = st.session_state.setdefault(SETTINGS_KEY, {})
    for name in names:
        store.pop(name, None)
        st.session_state.pop(f"w_{name}", None)


def current_run_id() -> str | None:
    """The run on display: the URL wins (reloads), else the session (page switches)."""
    run_id = st.query_params.get("run") or st.session_state.get(RUN_KEY)
    if run_id:
        set_current_run(run_id)
    return run_id or None


def set_current_run(run_id: str | None) -> None:
    if run_id:
        st.session_state[RUN_KEY] = run_id
        if st.query_params.get("run") != run_id:
            st.query_params["run"] = run_id
    else:
        st.session_state.pop(RUN_KEY, None)
        st.query_params.pop("run", None)
