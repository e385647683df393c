"""The dashboard server as it is really started (``fedsct dashboard`` → ``python -m
app.serve``), from a folder that is not the repository: it listens on loopback only, answers
only allowed Host names, and refuses a non-loopback address without sign-in."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.serve import host_name
from app.views.common import user_allowed

pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _get(port: int, host: str, path: str = "/_stcore/health") -> int:
    return _response(port, host, path)[0]


def _response(port: int, host: str, path: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def decoys(folder: Path) -> Path:
    """Files named like our modules and the standard library's in ``folder``, each leaving a
    mark if it is ever run; returns where the marks go."""
    marks = folder / "ran"
    mark = f"import pathlib; pathlib.Path({str(marks)!r}).mkdir(exist_ok=True); " \
           f"pathlib.Path({str(marks)!r}, __name__).touch()\n"
    for name in ("app/__init__.py", "app/serve.py", "engine/__init__.py",
                 "engine/orchestration/__init__.py", "engine/orchestration/jobs.py",
                 "tomllib.py", "streamlit.py"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(mark)
    return marks


def test_started_elsewhere_it_listens_on_loopback_and_checks_host(tmp_path: Path) -> None:
    """Started from a folder holding decoys, as the `fedsct` command starts (its script does
    not put the working folder on sys.path): only the dashboard's own code runs."""
    port = _free_port()
    marks = decoys(tmp_path)
    env = {**os.environ, "FEDSCT_RUNS_DIR": str(tmp_path / "runs")}
    server = subprocess.Popen([sys.executable, "-P", "-m", "engine", "dashboard", "--port",
                               str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _listening(port):
            assert server.poll() is None, server.stdout.read().decode()
            time.sleep(0.2)
        assert _listening(port) == {"127.0.0.1"}
        status = 0
        while time.monotonic() < deadline:
            try:
                status = _get(port, f"127.0.0.1:{port}")
            except OSError:
                time.sleep(0.2)
                continue
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        assert _get(port, f"localhost:{port}") == 200
        # A page whose DNS name was rebound to 127.0.0.1 sends its own name as the Host.
        assert _get(port, "attacker.example") == 400
        assert _get(port, f"attacker.example:{port}") == 400
        assert not marks.exists(), sorted(p.name for p in marks.iterdir())
        # No other site may frame the dashboard (clickjacking): the page and its API say so.
        for path in ("/", "/_stcore/health"):
            status, headers = _response(port, f"127.0.0.1:{port}", path)
            assert status == 200
            assert headers["content-security-policy"] == "frame-ancestors 'none'"
            assert headers["x-frame-options"] == "DENY"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.20", "dashboard.local"])
def test_non_loopback_without_sign_in_is_refused(tmp_path: Path, address: str) -> None:
    done = subprocess.run([sys.executable, "-m", "app.serve", "--address", address],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--address {address}" in lines[0]
    assert "--auth-config" in lines[0]


def test_an_incomplete_sign_in_config_is_refused(tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text('[auth]\nclient_id = "x"\n')
    done = subprocess.run([sys.executable, "-m", "app.serve", "--address", "0.0.0.0",
                           "--auth-config", str(auth)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "lacks redirect_uri, cookie_secret, client_secret, server_metadata_url" in done.stderr


def test_host_names_keep_ipv6_brackets() -> None:
    assert host_name("[::1]:8501") == "[::1]" and host_name("[::1]") == "[::1]"
    assert host_name("LocalHost:8501") == "localhost" and host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("[::1") == "[::1" and host_name("") == ""


def test_served_on_ipv6_loopback_it_answers_its_own_address(tmp_path: Path) -> None:
    """`--address ::1`: browsers send `Host: [::1]:PORT`, which is allowed; a rebound name
    is not."""
    port = _free_port()
    env = {**os.environ, "FEDSCT_RUNS_DIR": str(tmp_path / "runs")}
    server = subprocess.Popen([sys.executable, "-P", "-m", "engine", "dashboard", "--address",
                               "::1", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)

    def get(host: str) -> int:
        conn = http.client.HTTPConnection("::1", port, timeout=10)
        try:
            conn.putrequest("GET", "/_stcore/health", skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                status = get(f"[::1]:{port}")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200
        assert get("attacker.example") == 400
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


FULL_AUTH = ('[auth]\nredirect_uri = "https://fedsct.example.org/oauth2callback"\n'
             'cookie_secret = "s"\nclient_id = "c"\nclient_secret = "x"\n'
             'server_metadata_url = "https://login.example.org/.well-known/openid-configuration"\n')


@pytest.mark.parametrize(("extra", "message"), [
    ("", "lacks allowed_users, so anyone with an account at the identity provider could sign in"),
    ("allowed_users = []\n", "lacks allowed_users"),
    ('allowed_users = "alice@hospital.org"\n', "allowed_users must be a list of e-mail"),
])
def test_sign_in_for_other_machines_needs_an_allow_list(tmp_path: Path, extra: str,
                                                        message: str) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text(FULL_AUTH + extra)
    done = subprocess.run([sys.executable, "-m", "app.serve", "--address", "0.0.0.0",
                           "--auth-config", str(auth)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_who_may_sign_in() -> None:
    allowed = ["alice@hospital.org", "@radiotherapy.example"]
    assert user_allowed("Alice@Hospital.org", allowed)
    assert user_allowed("bob@radiotherapy.example", allowed)
    assert not user_allowed("bob@hospital.org", allowed)
    assert not user_allowed("eve@evil.radiotherapy.example", allowed)
    assert not user_allowed("", allowed) and not user_allowed(None, allowed)
    assert not user_allowed("alice@hospital.org.evil.example", allowed)
    assert user_allowed("anyone@anywhere.example", [])  # loopback without a list
    assert read_auth_ok(FULL_AUTH + 'allowed_users = ["Alice@Hospital.org "]\n') == [
        "alice@hospital.org"]


def read_auth_ok(text: str) -> list[str]:
    import tempfile

    from app.serve import read_auth

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(text)
    return read_auth(Path(fh.name), need_allowed=True)[1]


def test_the_upload_cap_the_page_names_is_the_one_served() -> None:
    from app.serve import MAX_UPLOAD_MB as served
    from app.views.data import MAX_UPLOAD_MB, UPLOAD_LIMITS

    assert served == MAX_UPLOAD_MB and f"{served}MB" in UPLOAD_LIMITS


def test_a_session_whose_browser_left_is_closed_and_its_uploads_freed() -> None:
    """Streamlit forgets a disconnected session without shutting it down, so its uploads
    stayed in memory until the server exited. Past ABANDONED_AFTER_S without a browser, a
    session holding uploads is closed and its files dropped; a session with a browser, and
    one that came back, keep theirs."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from app.serve import ABANDONED_AFTER_S, close_abandoned_sessions

    class Runtime:  # the calls the server makes on Streamlit's runtime
        def __init__(self) -> None:
            self.uploaded_file_mgr = MemoryUploadedFileManager("/upload")
            self.active = {"open", "back"}
            self.closed: list[str] = []
            self.states = {sid: {"_upload_checked": sid} for sid in ("open", "left", "back")}
            self._session_mgr = self

        def get_session_info(self, sid: str) -> SimpleNamespace:
            return SimpleNamespace(session=SimpleNamespace(session_state=self.states[sid]))

        def is_active_session(self, sid: str) -> bool:
            return sid in self.active

        def close_session(self, sid: str) -> None:
            self.closed.append(sid)

    rt = Runtime()
    for sid in ("open", "left", "back"):
        rt.uploaded_file_mgr.add_file(sid, UploadedFileRec(f"{sid}-mri", "mr.nii", "x",
                                                           b"\0" * 1000))
    left_at: dict[str, float] = {"back": 0.0}  # seen without a browser before it came back
    assert close_abandoned_sessions(rt, left_at, 100.0) == []
    assert left_at == {"left": 100.0}  # "back" is forgotten: its browser returned
    assert close_abandoned_sessions(rt, left_at, 100.0 + ABANDONED_AFTER_S - 1) == []
    assert close_abandoned_sessions(rt, left_at, 100.0 + ABANDONED_AFTER_S) == ["left"]
    assert rt.closed == ["left"] and left_at == {}
    assert rt.states == {"open": {"_upload_checked": "open"}, "left": {},
                         "back": {"_upload_checked": "back"}}
    assert sorted(rt.uploaded_file_mgr.file_storage) == ["back", "open"]
    assert rt.uploaded_file_mgr.get_files("left", ["left-mri"]) == []
