"""The dashboard as ``make run`` starts it, for the benchmarks that measure it from a real
browser (``tab_cost``, ``upload_memory``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard(root: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """``fedsct dashboard`` on runs folder ``root``, a free port and its own process group;
    yields (the server process, its URL) once it answers its health check, and ends it
    after the block."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "engine", "dashboard", "--port", str(port)],
                              env=os.environ | {"FEDSCT_RUNS_DIR": str(root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        yield server, url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def chromium(playwright: Any) -> Any:
    """Debian's headless chromium, driven by Playwright (no browser download)."""
    return playwright.chromium.launch(executable_path=shutil.which("chromium")
                                      or "/usr/bin/chromium", args=["--no-sandbox"])
