"""Process supervision: the processes the lab starts, and how they are recognised and stopped.

Background jobs (:mod:`engine.orchestration.queue`) and the Flower deployment's SuperLink and
SuperNodes (:mod:`engine.federation.flower_runtime`) are started by :func:`spawn`, their
output in a log file. A recorded process is its pid *and* its start time
(:func:`process_identity`): a pid alone may belong to another process later, which is never
signalled (:func:`pid_alive`, :func:`terminate_group`). Linux ``/proc`` is read where
available; elsewhere a pid is trusted only when no start time was recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

JOB_PID_FILE = "job.pid"  # written by the process that launched a background run


def spawn(cmd: list[str], log: Path, *, env: Mapping[str, str], cwd: Path | str,
          new_session: bool = False) -> subprocess.Popen:
    """Start ``cmd`` with its output appended to ``log`` and no input. ``new_session``: in a
    process group of its own (a background job, stopped as a group by
    :func:`terminate_group`); else in the caller's group, so that stopping the caller's group
    stops it too."""
    with open(log, "ab") as out:  # the child holds its own copy of the file
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=new_session,
                                env=dict(env), cwd=cwd)


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22):
    with the pid, it identifies the process even after the pid is reused. None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as ended) and, when its recorded
    ``start`` is given, is the same process (not another one that got the pid later)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return start is None  # no /proc: cannot tell a reused pid apart
    if fields[0] == "Z":  # a zombie child still answers kill(0)
        return False
    return start is None or fields[19] == str(start)


def process_identity(pid: int | None = None) -> dict[str, int | None]:
    """``{"pid", "pid_start"}`` of ``pid`` (default: this process), as runs record it."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "pid_start": process_start(pid)}


def read_job_pid(folder: Path) -> tuple[int | None, int | None]:
    """(pid, start) from a ``job.pid`` file ("PID START", or "PID" from older versions)."""
    try:
        parts = (folder / JOB_PID_FILE).read_text().split()
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else None
    except (OSError, ValueError, IndexError):
        return None, None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), read from /proc; empty elsewhere."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines()
                     if line.startswith("PPid:")), 0)
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def terminate_group(pid: int | None, start: int | None) -> None:
    """SIGTERM the process group of ``pid``, only if it is still the recorded process: a pid
    without its recorded start time (a run from an older version) cannot be told apart from
    another process that got the pid later, so it is never signalled."""
    if pid is not None and start is not None and pid_alive(pid, start):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
