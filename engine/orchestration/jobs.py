"""Background jobs: runs and sweeps execute in detached processes that write their folders.

The dashboard starts a job and returns at once; the job survives page changes and reloads
(the page finds it again through its run id or sweep folder). Every job goes through the one
queue (:mod:`engine.orchestration.queue`): it waits while another heavy job runs. Cancelling
a waiting job takes it off the queue; a running one gets a flag it polls between clients,
and its process group is terminated if it does not stop in time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engine.core.config import ExperimentConfig
from engine.core.processes import JOB_PID_FILE, pid_alive, read_job_pid, terminate_group
from engine.core.run_folder import RunFolder, write_json_atomic
from engine.orchestration import queue
from engine.orchestration.experiment import execute
from engine.orchestration.resources import check_resources
from engine.orchestration.store import check_resumable, create_run, runs_root
from engine.orchestration.study import run_study, study_folder
from engine.orchestration.study_catalogue import study_cells
from engine.orchestration.sweep_catalogue import sweep_spec
from engine.orchestration.sweeps import (
    CANCEL_FILE,
    read_sweep_progress,
    run_sweep,
    sweep_folder,
)
from engine.orchestration.threads import default_threads, use_threads

JOBS_MODULE = "engine.orchestration.jobs"


def start_job(cfg: ExperimentConfig, root: str | Path | None = None,
              preset: str | None = None, owner: str | None = None) -> RunFolder:
    """Create a run folder for ``cfg`` and queue its execution in a detached process;
    ``ConfigError`` (one line, with the estimate) when the machine cannot hold the run or the
    queue is full (``owner``: see :class:`engine.orchestration.queue.Job`)."""
    queue.check_room(runs_root(root), owner)  # before the run's folder is made
    check_resources(cfg, runs_root(root))
    run = create_run(cfg, root, preset=preset)
    queue.submit(run.root, kind="run", label=cfg.name or preset or "run", folder=run.path,
                 cmd=queue.python_module(JOBS_MODULE, str(run.path)), owner=owner)
    return run


def resume_job(run: RunFolder, owner: str | None = None) -> RunFolder:
    """Queue an interrupted, failed or cancelled run to go on from its last checkpoint
    (``ValueError`` when it cannot be resumed, see :func:`check_resumable`)."""
    check_resumable(run)
    queue.check_room(run.root, owner)
    run.clear_cancel()
    # The ended process's identity would make the waiting run look interrupted again.
    (run.path / JOB_PID_FILE).unlink(missing_ok=True)
    run.set_status("queued", phase="resuming", error=None, pid=None, pid_start=None,
                   finished=None)
    queue.submit(run.root, kind="run", label=f"{run.config().name or 'run'} (resumed)",
                 folder=run.path, cmd=queue.python_module(JOBS_MODULE, str(run.path),
                                                           "--resume"))
    return run


def cancel_job(run: RunFolder, grace_s: float = 20.0) -> None:
    """Stop a run: a waiting one leaves the queue at once; a running one is asked to stop and
    its process group is terminated if it is still alive after ``grace_s``."""
    if queue.withdraw(run.root, run.path):
        run.set_status("cancelled", phase="cancelled", finished=time.time())
        return
    run.request_cancel()
    status = run.status()
    deadline = time.time() + grace_s
    while time.time() < deadline and run.status().active:
        time.sleep(0.2)
    if run.status().active:
        terminate_group(status.pid, status.pid_start)
        run.set_status("cancelled", phase="cancelled", finished=time.time())


def start_sweep_job(name: str, sets: list[str] | tuple = (),
                    root: str | Path | None = None, owner: str | None = None) -> Path:
    """Queue sweep ``name`` (run or resume it) in a detached process; returns its folder,
    whose ``sweep.json`` shows progress (``state``, ``cells_done``, ``current_run``)."""
    spec = sweep_spec(name)
    queue.check_room(runs_root(root), owner)
    folder = sweep_folder(name, sets, root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CANCEL_FILE).unlink(missing_ok=True)  # a stale stop must not end the new job
    # Visible at once, before the child has validated anything.
    write_json_atomic(folder / "sweep.json", {"name": name, "base": spec["base"],
                                              "state": "queued", "cells_done": 0,
                                              "cells": [{} for _ in spec["cells"]]})
    args = ["--sweep", name, "--out", str(runs_root(root))]
    for s in sets:
        args += ["--set", s]
    queue.submit(runs_root(root), kind="sweep", label=f"the {name} study", folder=folder,
                 cmd=queue.python_module(JOBS_MODULE, *args), owner=owner)
    return folder


def start_study_job(scale: str, root: str | Path | None = None,
                    owner: str | None = None) -> Path:
    """Queue the study at ``scale`` (run or continue it, see
    :func:`engine.orchestration.study.run_study`); returns its folder, whose ``sweep.json``
    shows progress like a sweep's."""
    queue.check_room(runs_root(root), owner)
    folder = study_folder(scale, root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CANCEL_FILE).unlink(missing_ok=True)
    write_json_atomic(folder / "sweep.json", {"name": f"study-{scale}", "base": "study",
                                              "scale": scale, "state": "queued",
                                              "cells_done": 0,
                                              "cells": [{} for _ in study_cells(scale)]})
    queue.submit(runs_root(root), kind="sweep", label=f"the study ({scale} scale)",
                 folder=folder, cmd=queue.python_module(JOBS_MODULE, "--study", scale, "--out",
                                                        str(runs_root(root))),
                 owner=owner)
    return folder


def cancel_sweep(folder: Path, grace_s: float = 20.0) -> None:
    """Stop a background sweep and wait for its process to end: no new cell starts, the
    running cell is cancelled; after ``grace_s`` the process group is terminated. A sweep
    still waiting for its turn just leaves the queue."""
    if queue.withdraw(folder.parent.parent, folder):
        write_json_atomic(folder / "sweep.json",
                          {**_read_json(folder / "sweep.json"), "state": "cancelled"})
        return
    pid, start = read_job_pid(folder)
    (folder / CANCEL_FILE).touch()
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            progress = read_sweep_progress(folder)
        except ValueError:  # damaged: its process is still stopped below
            progress = None
        current = progress.current_run if progress else None
        if current:
            run = RunFolder(folder.parent.parent / current)
            if run.path.is_dir() and run.status().active:
                run.request_cancel()
        if not pid_alive(pid, start):
            return
        time.sleep(0.3)
    terminate_group(pid, start)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def main(argv: list[str] | None = None) -> int:
    """A queued job's process: ``PATH [--resume]`` executes a run folder, ``--sweep NAME
    --out ROOT [--set K=V]...`` runs a sweep, ``--study SCALE --out ROOT`` runs the study.
    It leaves the queue when it ends."""
    args = argv if argv is not None else sys.argv[1:]
    # One thread count for the whole job, whatever the machine's load: it is part of what
    # the figures are (engine.orchestration.threads).
    threads = use_threads(default_threads())
    try:
        if args[0] == "--study":
            run_study(args[1], root=args[args.index("--out") + 1])
            return 0
        if args[0] == "--sweep":
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            out = args[args.index("--out") + 1]
            run_sweep(args[1], root=out, sets=sets)
            return 0
        run = RunFolder(Path(args[0]))
        run.log(f"torch threads {threads}, fixed for the whole run")
        done = execute(run, resume="--resume" in args[1:])
        return 0 if done is not None or run.status().state == "cancelled" else 1
    finally:
        queue.finished()


if __name__ == "__main__":
    sys.exit(main())
