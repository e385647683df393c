"""Serve the dashboard: ``fedsct dashboard`` and ``make run`` start it through here.

Every setting that matters for safety is passed explicitly, so it holds wherever the command
is started from (a ``.streamlit/config.toml`` is only read from the working directory):

* the address (127.0.0.1 unless asked otherwise) and port, the upload limit, no usage stats;
* only requests whose ``Host`` is an allowed name are answered (Starlette's
  ``TrustedHostMiddleware``), so a web page that rebinds its DNS name to 127.0.0.1 cannot
  drive the dashboard from the user's browser;
* an address other than loopback is refused unless sign-in is configured: Streamlit's
  ``st.login`` with an OpenID Connect provider (``--auth-config`` TOML with an ``[auth]``
  section: ``redirect_uri``, ``cookie_secret``, ``client_id``, ``client_secret``,
  ``server_metadata_url``); with it, every page asks for sign-in first (``app/main.py``);
* the server closes sessions whose browser left (:func:`close_abandoned_sessions`), so
  uploads do not stay in memory for ever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from streamlit import runtime

from engine.orchestration import queue
from engine.orchestration.resources import release_freed_memory
from engine.orchestration.store import runs_root

MAIN = Path(__file__).with_name("main.py")
_LOG = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
AUTH_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret",
             "server_metadata_url")
# Per uploaded file, in MB: the same figure as .streamlit/config.toml, which says why 136 lets
# the largest file the NIfTI loader accepts (129.1 MiB) through and no file much larger.
MAX_UPLOAD_MB = 136


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP or a host name) only accepts connections from this
    machine."""
    if address in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def read_auth(path: Path, *, need_allowed: bool) -> tuple[dict[str, str], list[str]]:
    """The ``[auth]`` section of ``path`` and its ``allowed_users`` (addresses, or
    ``@domain`` for a whole domain); ``ValueError`` naming what is wrong. ``need_allowed``:
    an empty list is refused (any account the identity provider accepts would get in)."""
    try:
        auth = tomllib.loads(path.read_text()).get("auth")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"--auth-config {path}: cannot read it ({err})") from None
    missing = [k for k in AUTH_KEYS if not isinstance(auth, dict) or not auth.get(k)]
    if missing:
        raise ValueError(f"--auth-config {path}: the [auth] section lacks "
                         f"{', '.join(missing)} (see the README, 'Share the dashboard')")
    assert isinstance(auth, dict)
    allowed = auth.get("allowed_users", [])
    if not isinstance(allowed, list) or not all(isinstance(a, str) and a.strip()
                                                for a in allowed):
        raise ValueError(f"--auth-config {path}: allowed_users must be a list of e-mail "
                         "addresses or @domains, e.g. [\"alice@hospital.org\", "
                         "\"@radiotherapy.example\"]")
    if need_allowed and not allowed:
        raise ValueError(f"--auth-config {path}: the [auth] section lacks allowed_users, so "
                         "anyone with an account at the identity provider could sign in; list "
                         "who may (e-mail addresses, or @domain for a whole domain)")
    return {k: str(auth[k]) for k in AUTH_KEYS}, [a.strip().lower() for a in allowed]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedsct dashboard",
                                description="Serve the dashboard (default: "
                                            "http://127.0.0.1:8501, this machine only).")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on; anything but loopback needs --auth-config")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name browsers use to reach the dashboard (repeatable); "
                        "localhost and 127.0.0.1 are always allowed")
    p.add_argument("--auth-config", type=Path, metavar="FILE.toml",
                   help="sign-in with an OpenID Connect provider: a TOML file whose [auth] "
                        "section holds " + ", ".join(AUTH_KEYS) + " and, for any address "
                        "but loopback, allowed_users (e-mail addresses, or @domain)")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port {args.port} is not a port number (1-65535)")
    return args


# Sent with every response: no other site may show the dashboard inside a frame, where a
# page could trick a signed-in user into clicking its buttons (clickjacking).
NO_FRAMING = ((b"content-security-policy", b"frame-ancestors 'none'"),
              (b"x-frame-options", b"DENY"))


class NoFraming:
    """ASGI middleware adding :data:`NO_FRAMING` to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def framed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *NO_FRAMING]}
            await send(message)

        await self.app(scope, receive, framed)


def host_name(header: str) -> str:
    """The host of a ``Host`` header without its port, lower-case: ``[::1]:8501`` → ``[::1]``
    (an IPv6 address keeps its brackets; cutting at the first colon would leave ``[``)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else header
    return header.split(":", 1)[0]


class AllowedHosts:
    """ASGI middleware answering 400 to a request whose ``Host`` is not one of ``allowed``
    (a page whose DNS name was rebound to this machine sends its own name)."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app, self.allowed = app, {h.lower() for h in allowed}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                await PlainTextResponse("Invalid host header", status_code=400)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


# Streamlit drops a session whose browser left (tab closed) without shutting it down, so
# its uploaded files (up to three of 130 MiB) and its state (the checked pair) stayed in the
# server's memory until it exited. A session that holds uploads and has had no browser for
# this long is closed; a page reload is a new session anyway, and Streamlit itself forgets a
# disconnected session after 120 s.
ABANDONED_AFTER_S = 60.0
JANITOR_EVERY_S = 10.0


def close_abandoned_sessions(rt: Any, left_at: dict[str, float], now: float) -> list[str]:
    """Close the sessions of ``rt`` (a Streamlit runtime) that hold uploaded files and have
    had no browser for :data:`ABANDONED_AFTER_S`; returns their ids. ``left_at`` (session id
    → when it was first seen without a browser) is kept between calls. Runs on the server's
    event loop (Streamlit's ``close_session`` must)."""
    mgr = rt.uploaded_file_mgr
    holders = list(getattr(mgr, "file_storage", {}))
    closed = []
    for sid in holders:
        if rt.is_active_session(sid):
            left_at.pop(sid, None)
        elif now - left_at.setdefault(sid, now) >= ABANDONED_AFTER_S:
            _clear_state(rt, sid)
            rt.close_session(sid)  # and, in Streamlit, its files
            mgr.remove_session_files(sid)  # also when Streamlit had forgotten the session
            left_at.pop(sid)
            closed.append(sid)
    for sid in set(left_at) - set(holders):
        left_at.pop(sid)
    if closed:
        gc.collect()  # a closed session is a web of cycles: freed by the collector, not at once
        release_freed_memory()
    return closed


def _clear_state(rt: Any, sid: str) -> None:
    """Empty a session's state (our checked pair, the upload boxes' files): a closed session
    stays reachable inside Streamlit, so closing it alone frees neither (measured in
    benchmarks/README.md). The runtime's own accessor covers connected sessions only, hence
    its session manager; without one (another Streamlit), closing is all that is done."""
    manager = getattr(rt, "_session_mgr", None)
    info = manager.get_session_info(sid) if manager is not None else None
    if info is not None:
        info.session.session_state.clear()


@contextlib.asynccontextmanager
async def _janitor(_app: st.App) -> AsyncIterator[None]:
    async def sweep() -> None:
        left_at: dict[str, float] = {}
        while True:
            await asyncio.sleep(JANITOR_EVERY_S)
            if not runtime.exists():
                continue
            try:
                close_abandoned_sessions(runtime.get_instance(), left_at, time.monotonic())
            except Exception:  # noqa: BLE001 - a failed sweep must not end the sweeping
                _LOG.warning("closing abandoned sessions failed; trying again in %.0f s",
                             JANITOR_EVERY_S, exc_info=True)

    task = asyncio.create_task(sweep())
    try:
        yield
    finally:
        task.cancel()


def build_app(allowed_hosts: list[str], auth: dict[str, str] | None,
              allowed_users: list[str] | None = None) -> st.App:
    """The dashboard as an ASGI app that answers only ``allowed_hosts`` and may not be
    framed by another site; with ``auth``, only ``allowed_users`` get past sign-in (empty:
    any signed-in account)."""
    # An IPv6 address is written in brackets in a Host header.
    hosts = [f"[{h}]" if ":" in h and not h.startswith("[") else h
             for h in dict.fromkeys([*LOOPBACK_HOSTS, *allowed_hosts])]
    secrets = {"auth": auth, "access": {"allowed_users": allowed_users or []}} if auth else None
    return st.App(str(MAIN), secrets=secrets, lifespan=_janitor,
                  middleware=[Middleware(NoFraming), Middleware(AllowedHosts, allowed=hosts)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        auth, users = (read_auth(args.auth_config, need_allowed=not is_loopback(args.address))
                       if args.auth_config else (None, []))
    except ValueError as err:
        print(f"fedsct dashboard: {err}", file=sys.stderr)
        return 2
    if not is_loopback(args.address) and auth is None:
        print(f"fedsct dashboard: --address {args.address} would let other machines reach "
              "patients' data without signing in; add --auth-config FILE.toml (OpenID "
              "Connect sign-in, see the README) or keep the default 127.0.0.1",
              file=sys.stderr)
        return 2
    allowed = list(args.allowed_host)
    if not is_loopback(args.address) and args.address not in ("0.0.0.0", "::"):
        allowed.append(args.address)
    # The queue advances on its own while the dashboard runs, whether or not a page is open.
    threading.Thread(target=queue.advance_forever, args=(runs_root(),), daemon=True,
                     name="job-queue").start()
    build_app(allowed, auth, users).run(config={
        "server.address": args.address, "server.port": args.port,
        "server.headless": True, "server.maxUploadSize": MAX_UPLOAD_MB,
        "server.enableXsrfProtection": True, "browser.gatherUsageStats": False,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
