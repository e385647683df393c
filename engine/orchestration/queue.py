"""One queue for the background jobs of every dashboard session.

Two torch jobs on two cores slow each other several-fold, so heavy jobs (runs, sweeps,
resumed runs) go through this queue: at most :func:`max_jobs` run at once (``FEDSCT_MAX_JOBS``,
default 1) and the others wait their turn in the order they were asked for. The queue is a
folder of small JSON files under the runs root (``<root>/queue/``), so every session, and a
reloaded browser, sees the same jobs:

* :func:`submit` adds a job and starts it when a slot is free;
* a job's process takes itself off the queue when it ends and starts the next one
  (:func:`finished`), and :func:`pump` (called by every listing) starts waiting jobs whose
  turn has come and drops jobs whose process died, so a killed job never blocks the queue;
* each job runs on the same fixed number of torch threads from start to end
  (:func:`engine.orchestration.threads.default_threads`: ``cores ÷ max_jobs`` unless
  ``FEDSCT_THREADS`` says otherwise), set through ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
  before torch starts, so that its figures do not depend on what else the machine runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.core.config import ConfigError
from engine.core.processes import JOB_PID_FILE, pid_alive, process_identity, spawn
from engine.core.run_folder import write_json_atomic
from engine.orchestration.threads import default_threads, job_environment, max_jobs

QUEUE_DIR = "queue"
ENTRY_ENV = "FEDSCT_QUEUE_ENTRY"  # a job's own queue file, for finished()


@dataclass
class Job:
    """One queued or running job.

    Attributes:
        id: unique id (also the queue file's name, which sorts by submission time).
        kind: ``run`` (including a resumed run) or ``sweep``.
        label: what the user asked for, in words (e.g. the preset's name).
        folder: the run folder or sweep folder the job writes.
        cmd: the command that runs it (``python -m ...``).
        state: ``waiting`` or ``running``.
        owner: who asked for it (a dashboard's browser session), for the per-session cap;
            None from the command line.
    """

    id: str
    kind: str
    label: str
    folder: str
    cmd: list[str]
    state: str = "waiting"
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    pid: int | None = None
    pid_start: int | None = None
    owner: str | None = None

    @property
    def alive(self) -> bool:
        return self.state == "running" and pid_alive(self.pid, self.pid_start)


def _dir(root: Path) -> Path:
    folder = Path(root) / QUEUE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# How long a change to the queue waits for another process holding its lock: changes take
# milliseconds, so a holder past this is stuck, and waiting on would hang every page.
LOCK_TIMEOUT_S = 10.0


class QueueBusy(RuntimeError):
    """The queue's lock stayed held past :data:`LOCK_TIMEOUT_S`."""


# Jobs that may wait at once: a page that queues on every click (or a script) must not fill
# the machine's disk and the queue with runs nobody will see for days. One browser session
# may hold half of them (one click comparing all 7 rules fits), so it cannot lock others out.
MAX_WAITING = 16
MAX_WAITING_PER_SESSION = 8


class QueueFull(ConfigError):
    """Too many jobs wait already; refused like a setting the machine cannot take, so every
    Start button shows it in one line."""


def check_room(root: Path, owner: str | None = None) -> None:
    """``QueueFull`` when :data:`MAX_WAITING` jobs are waiting already, or
    :data:`MAX_WAITING_PER_SESSION` of them were asked for by ``owner``."""
    waiting = [job for _, job in _entries(root) if job is not None and job.state == "waiting"]
    if len(waiting) >= MAX_WAITING:
        raise QueueFull(f"{len(waiting)} jobs are waiting in the queue already (at most "
                        f"{MAX_WAITING}); wait for them to start, or stop some on the Runs page")
    mine = sum(1 for job in waiting if owner is not None and job.owner == owner)
    if mine >= MAX_WAITING_PER_SESSION:
        raise QueueFull(f"you have {mine} jobs waiting in the queue already (at most "
                        f"{MAX_WAITING_PER_SESSION} per browser session); wait for them to "
                        "start, or stop some on the Runs page")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One session at a time changes the queue (two clicks at once start one job). The
    holder's pid is written into the lock file, so a stuck holder can be named."""
    with open(_dir(root) / ".lock", "a+") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "?"
                    raise QueueBusy(f"the job queue has been locked by process {holder} for "
                                    f"more than {LOCK_TIMEOUT_S:.0f} s; try again, or stop "
                                    "that process") from None
                time.sleep(0.05)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> Job | None:
    try:
        data = json.loads(path.read_text())
        return Job(**data) if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return None


def _entries(root: Path) -> list[tuple[Path, Job | None]]:
    return [(p, _read(p)) for p in sorted(_dir(root).glob("*.json"))]


def folders(root: Path) -> set[Path]:
    """The folders of the jobs in the queue, waiting or running, read without changing it."""
    return {Path(job.folder) for _, job in _entries(root) if job is not None}


def jobs(root: Path) -> list[Job]:
    """Running jobs, then waiting ones in their turn's order (after :func:`pump`)."""
    pump(root)
    found = [j for _, j in _entries(root) if j is not None]
    return sorted(found, key=lambda j: (j.state != "running", j.submitted))


# The jobs this process started: reaped by :func:`reap` so that none stays a zombie.
_children: list[subprocess.Popen] = []


def reap() -> None:
    """Collect the exit of every job this process started that has ended."""
    _children[:] = [proc for proc in _children if proc.poll() is None]


def advance_forever(root: Path, every_s: float = 5.0) -> None:
    """Keep the queue moving without a browser: every ``every_s`` reap ended jobs and
    :func:`pump` (a job killed without saying so leaves the queue, the next one starts). The
    dashboard runs this in a background thread."""
    while True:
        try:
            reap()
            pump(root)
        except (OSError, QueueBusy):  # a full disk, a stuck holder: try again next time
            pass
        time.sleep(every_s)


def _start(root: Path, path: Path, job: Job) -> None:
    env = os.environ | job_environment(default_threads()) | {ENTRY_ENV: str(path)}
    proc = spawn(job.cmd, Path(job.folder) / "log.txt", env=env, cwd=os.getcwd(),
                 new_session=True)
    _children.append(proc)
    ident = process_identity(proc.pid)
    job.state, job.started = "running", time.time()
    job.pid, job.pid_start = ident["pid"], ident["pid_start"]
    write_json_atomic(path, asdict(job))
    # The folder's own record of its process, read before the job writes its status.
    (Path(job.folder) / JOB_PID_FILE).write_text(f"{job.pid} {job.pid_start or ''}".strip())


def pump(root: Path) -> None:
    """Drop jobs whose process is gone and start waiting jobs while slots are free."""
    with _locked(root):
        entries = _entries(root)
        running = 0
        for path, job in entries:
            if job is None or (job.state == "running" and not job.alive):
                path.unlink(missing_ok=True)  # damaged, or ended without saying so
            elif job.state == "running":
                running += 1
        for path, job in entries:
            if running >= max_jobs():
                break
            if job is not None and job.state == "waiting" and path.exists():
                try:
                    _start(root, path, job)
                except OSError:  # its folder is gone (deleted while it waited): nothing to run
                    path.unlink(missing_ok=True)
                    continue
                running += 1


def submit(root: Path, *, kind: str, label: str, folder: Path, cmd: list[str],
           owner: str | None = None) -> Job:
    """Queue a job for ``owner`` (see :class:`Job`); it starts at once when a slot is free.
    Returns it (``state`` tells)."""
    job = Job(id=f"{time.time_ns():020d}-{secrets.token_hex(3)}", kind=kind, label=label,
              folder=str(folder), cmd=cmd, owner=owner)
    with _locked(root):
        check_room(root, owner)
        write_json_atomic(_dir(root) / f"{job.id}.json", asdict(job))
    pump(root)
    return _read(_dir(root) / f"{job.id}.json") or job


def withdraw(root: Path, folder: Path) -> bool:
    """Take a waiting job for ``folder`` off the queue; False when none was waiting."""
    with _locked(root):
        for path, job in _entries(root):
            if job is not None and job.state == "waiting" and Path(job.folder) == Path(folder):
                path.unlink(missing_ok=True)
                return True
    return False


def finished() -> None:
    """Called by a queued job's process as it ends: leave the queue, start the next job."""
    entry = os.environ.get(ENTRY_ENV)
    if not entry:
        return
    path = Path(entry)
    path.unlink(missing_ok=True)
    pump(path.parent.parent)


def python_module(module: str, *args: str) -> list[str]:
    """The command that runs ``python -P -m module args`` with this interpreter: ``-P`` keeps
    the working folder (where the dashboard was started) off ``sys.path``, so a file there
    named like one of our modules, or the standard library's, is never run."""
    return [sys.executable, "-P", "-m", module, *args]
