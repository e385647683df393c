"""The run folder: one experiment's files, written atomically or append-only.

One experiment = one folder under a runs root (see :mod:`engine.orchestration.store`)::

    <run_id>/config.yaml      the validated config
    <run_id>/status.json      {"state": queued|running|done|failed|cancelled, ...} (atomic)
    <run_id>/metrics.jsonl    one JSON record per round (appended, flushed)
    <run_id>/summary.json     final results (atomic; only for finished runs)
    <run_id>/checkpoints/     final global model
    <run_id>/server_view/     what the server observed (see engine.federation.server_view)
    <run_id>/artifacts/       images for the dashboard and reports
    <run_id>/log.txt          the run's log
    <run_id>/job.pid          process id of a background run (engine.orchestration.jobs)

The folder is the source of truth; the run store's index is a cache of it. Runtimes (the
Flower ServerApp included) write through :class:`RunFolder` without knowing about the store.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.core.config import ExperimentConfig, validate_config

STATES = ("queued", "running", "done", "failed", "cancelled")
JOB_PID_FILE = "job.pid"  # written by the process that launched a background run
ACTIVE = ("queued", "running")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as ended)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class RunFolder:
    """One run's folder; every write is atomic or append-only."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def root(self) -> Path:
        return self.path.parent

    # -- config -----------------------------------------------------------------
    def config(self) -> ExperimentConfig:
        return validate_config(yaml.safe_load((self.path / "config.yaml").read_text()))

    # -- status -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Current status; a 'running' run whose process died is reported as failed."""
        try:
            status = json.loads((self.path / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {"state": "failed", "error": "status.json is missing or unreadable"}
        if "pid" not in status:
            try:
                status["pid"] = int((self.path / JOB_PID_FILE).read_text())
            except (OSError, ValueError):
                pass
        if status.get("state") in ACTIVE and status.get("pid") and not pid_alive(status["pid"]):
            status = status | {"state": "failed",
                               "error": "the run's process ended without finishing "
                                        "(killed or out of memory); see log.txt"}
        return status

    def set_status(self, state: str, **extra: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        old = {}
        try:
            old = json.loads((self.path / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
        status = old | extra | {"state": state, "updated": time.time()}
        write_json_atomic(self.path / "status.json", status)

    # -- progress ---------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
            fh.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """Per-round records written so far (a half-written last line is skipped)."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def summary(self) -> dict[str, Any] | None:
        """The run's results, or None when missing or unreadable (a damaged file must not
        break listings; pages that show it say which file is damaged)."""
        try:
            return json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / "summary.json", summary)

    def log(self, message: str) -> None:
        with open(self.path / "log.txt", "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    # -- cancellation -------------------------------------------------------------
    def request_cancel(self) -> None:
        (self.path / "cancel").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()

    @property
    def artifacts(self) -> Path:
        p = self.path / "artifacts"
        p.mkdir(exist_ok=True)
        return p
