"""Session state that must outlive page switches and browser reloads.

Streamlit drops a widget's keyed value when the user leaves its page, and the whole
session on a reload, so settings live under a plain (non-widget) key and the run being
shown lives in the URL (``?run=<id>``) as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app.params import FEDERATION_RUN

SETTINGS_KEY = "fed_settings"
REMEMBERED = "remembered"  # session-key prefix of values mirrored in the URL


def persisted(widget: Callable[..., Any], label: str, name: str, default: Any,
              **kwargs: Any) -> Any:
    """Render ``widget`` whose value survives a trip to another page and back."""
    store: dict[str, Any] = st.session_state.setdefault(SETTINGS_KEY, {})
    key = f"w_{name}"
    if key not in st.session_state:
        value = store.get(name, default)
        options = kwargs.get("options")
        # A stored choice that is no longer offered would make the widget raise.
        offered = options is None or (all(v in options for v in value)
                                      if isinstance(value, list) else value in options)
        st.session_state[key] = value if offered else default
    value = widget(label, key=key, **kwargs)
    store[name] = value
    return value


def forget(*names: str) -> None:
    """Drop stored settings so their widgets start again from fresh defaults."""
    store: dict[str, Any] = st.session_state.setdefault(SETTINGS_KEY, {})
    for name in names:
        store.pop(name, None)
        st.session_state.pop(f"w_{name}", None)


def set_setting(name: str, value: Any) -> None:
    """Store a setting as if its widget had been set: the widget shows it when it is next
    drawn (its own key is dropped so that the stored value is used)."""
    st.session_state.setdefault(SETTINGS_KEY, {})[name] = value
    st.session_state.pop(f"w_{name}", None)


def changed(name: str, value: Any) -> bool:
    """Whether ``value`` differs from the last one seen under ``name`` in this session (and
    remember it): to act once when, e.g., a link opens another run."""
    key = f"seen_{name}"
    if st.session_state.get(key) == value:
        return False
    st.session_state[key] = value
    return True


def remembered(param: str) -> str | None:
    """A value kept in the URL (``?param=``, survives reloads) and in the session (a page
    switch drops the URL's parameters): the URL wins."""
    value = st.query_params.get(param) or st.session_state.get(f"{REMEMBERED}_{param}")
    remember(param, value)
    return value or None


def remember(param: str, value: str | None) -> None:
    """Keep (or, with None, forget) ``value`` in both the URL and the session."""
    if value:
        st.session_state[f"{REMEMBERED}_{param}"] = value
        if st.query_params.get(param) != value:
            st.query_params[param] = value
    else:
        st.session_state.pop(f"{REMEMBERED}_{param}", None)
        st.query_params.pop(param, None)


def current_run_id() -> str | None:
    """The run on the Federation page (``?run=``)."""
    return remembered(FEDERATION_RUN)


def set_current_run(run_id: str | None) -> None:
    remember(FEDERATION_RUN, run_id)


def session_owner() -> str | None:
    """This browser session's id, which the job queue counts jobs by (a per-session cap);
    None outside a Streamlit session."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None
