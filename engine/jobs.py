"""Background jobs: a run executes in a detached subprocess that writes its run folder.

The dashboard starts a job and returns at once; the job survives page changes and reloads
(the page finds it again through its run id). Cancelling writes a flag the runner polls
between clients, and the process group is terminated if it does not stop in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.config import ExperimentConfig
from engine.runs import ACTIVE, JOB_PID_FILE, RunFolder, create_run


def start_job(cfg: ExperimentConfig, root: str | Path | None = None,
              preset: str | None = None) -> RunFolder:
    """Create a run folder for ``cfg`` and execute it in a detached process."""
    run = create_run(cfg, root, preset=preset)
    log = open(run.path / "log.txt", "a")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.jobs", str(run.path)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=os.getcwd(),
    )
    log.close()
    # A file of its own: writing status.json here could race with the child's own updates
    # (a fast run may already be done, and "queued" would overwrite it).
    (run.path / JOB_PID_FILE).write_text(str(proc.pid))
    return run


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


def main(argv: list[str] | None = None) -> int:
    from engine.experiment import execute

    args = argv if argv is not None else sys.argv[1:]
    run = RunFolder(Path(args[0]))
    return 0 if execute(run) is not None or run.status()["state"] == "cancelled" else 1


if __name__ == "__main__":
    sys.exit(main())
