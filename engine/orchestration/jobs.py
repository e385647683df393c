"""Background jobs: a run executes in a detached subprocess that writes its run folder.

The dashboard starts a job and returns at once; the job survives page changes and reloads
(the page finds it again through its run id). Cancelling writes a flag the runner polls
between clients, and the process group is terminated if it does not stop in time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.core.config import ExperimentConfig
from engine.core.run_folder import ACTIVE, JOB_PID_FILE, RunFolder, pid_alive, write_json_atomic
from engine.orchestration.experiment import execute
from engine.orchestration.presets import sweep_spec
from engine.orchestration.store import create_run, runs_root
from engine.orchestration.sweeps import CANCEL_FILE, sweep_folder


def start_job(cfg: ExperimentConfig, root: str | Path | None = None,
              preset: str | None = None) -> RunFolder:
    """Create a run folder for ``cfg`` and execute it in a detached process."""
    run = create_run(cfg, root, preset=preset)
    _spawn([sys.executable, "-m", "engine.orchestration.jobs", str(run.path)], run.path)
    return run


def _spawn(cmd: list[str], folder: Path) -> None:
    """Start ``cmd`` detached, logging to ``folder/log.txt``; its pid goes to ``job.pid``.

    A file of its own: writing status.json here could race with the child's own updates
    (a fast run may already be done, and "queued" would overwrite it).
    """
    log = open(folder / "log.txt", "a")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
    log.close()
    (folder / JOB_PID_FILE).write_text(str(proc.pid))


def cancel_job(run: RunFolder, grace_s: float = 20.0) -> None:
    """Ask the run to stop; terminate its process group if it is still alive after grace_s."""
    run.request_cancel()
    pid = run.status().get("pid")
    deadline = time.time() + grace_s
    while time.time() < deadline and run.status().get("state") in ACTIVE:
        time.sleep(0.2)
    if run.status().get("state") in ACTIVE and pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        run.set_status("cancelled", phase="cancelled", finished=time.time())


def start_sweep_job(name: str, sets: list[str] | tuple = (),
                    root: str | Path | None = None) -> Path:
    """Run (or resume) sweep ``name`` in a detached process; returns its folder, whose
    ``sweep.json`` shows progress (``state``, ``cells_done``, ``current_run``)."""
    spec = sweep_spec(name)
    folder = sweep_folder(name, sets, root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CANCEL_FILE).unlink(missing_ok=True)  # a stale stop must not end the new job
    # Visible at once, before the child has validated anything.
    write_json_atomic(folder / "sweep.json", {"name": name, "base": spec["base"],
                                              "state": "queued", "cells_done": 0,
                                              "cells": [{} for _ in spec["cells"]]})
    cmd = [sys.executable, "-m", "engine.orchestration.cli", "sweep", "--preset", name,
           "--out", str(runs_root(root))]
    for s in sets:
        cmd += ["--set", s]
    _spawn(cmd, folder)
    return folder


def cancel_sweep(folder: Path, grace_s: float = 20.0) -> None:
    """Stop a background sweep and wait for its process to end: no new cell starts, the
    running cell is cancelled; after ``grace_s`` the process group is terminated."""
    try:
        pid: int | None = int((folder / JOB_PID_FILE).read_text())
    except (OSError, ValueError):
        pid = None
    (folder / CANCEL_FILE).touch()
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            current = json.loads((folder / "sweep.json").read_text()).get("current_run")
        except (OSError, ValueError):
            current = None
        if current:
            run = RunFolder(folder.parent.parent / current)
            if run.path.is_dir() and run.status().get("state") in ACTIVE:
                run.request_cancel()
        if not pid_alive(pid):
            return
        time.sleep(0.3)
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError, TypeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    run = RunFolder(Path(args[0]))
    return 0 if execute(run) is not None or run.status()["state"] == "cancelled" else 1


if __name__ == "__main__":
    sys.exit(main())
