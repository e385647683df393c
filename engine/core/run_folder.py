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

import errno
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.core.config import ConfigError, ExperimentConfig, validate_config
from engine.core.processes import pid_alive, read_job_pid

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
# A run whose process ended without finishing: it can be resumed from its last checkpoint.
INTERRUPTED = "interrupted"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it into place:
    a reader sees the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))
        os.replace(tmp, path)
    except BaseException:  # a full disk, a bad value, Ctrl-C: leave no half-written file
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.PID.HEX.tmp``) that a killed process left in
    ``folder`` while writing a file atomically; those of live processes stay. Returns what
    was deleted."""
    gone = []
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is not None and not pid_alive(pid):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def number_or_none(value: Any, kind: type = float) -> Any:
    """``value`` as ``kind`` when it is a plain number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)


def text_or_none(value: Any) -> str | None:
    """``value`` when it is a string, else None."""
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Progress:
    """How far the current step of a run is: ``done`` of ``total`` ``unit``s (rounds,
    iterations, canaries), what it is working on (``detail``) and the seconds left at the
    step's speed so far (``eta_s``, None before the first unit)."""

    phase: str
    done: int
    total: int
    unit: str = "step"
    detail: str = ""
    eta_s: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> Progress | None:
        """The progress block of ``status.json``; None when absent or not a progress."""
        if not isinstance(raw, dict) or text_or_none(raw.get("phase")) is None:
            return None
        total = number_or_none(raw.get("total"), int)
        if not total or total < 1:
            return None
        return cls(phase=raw["phase"], done=number_or_none(raw.get("done"), int) or 0,
                   total=total, unit=text_or_none(raw.get("unit")) or "step",
                   detail=text_or_none(raw.get("detail")) or "",
                   eta_s=number_or_none(raw.get("eta_s")))


@dataclass(frozen=True)
class RunStatus:
    """A run's ``status.json``, typed. Written by the run's own process (and the queue); a
    field of the wrong type reads as absent, so a damaged field cannot break a listing.

    Times are seconds since the epoch; ``pid``/``pid_start`` identify the run's process
    (:func:`pid_alive`); ``threads`` is the torch thread count the run started with (a
    resume uses it again); ``config_hash`` the hash of the config it was created with."""

    state: str
    phase: str | None = None
    error: str | None = None
    preset: str | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    pid: int | None = None
    pid_start: int | None = None
    threads: int | None = None
    config_hash: str | None = None
    progress: Progress | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def step_progress(self) -> Progress | None:
        """The progress of the current phase (an earlier phase's is stale)."""
        return self.progress if self.progress and self.progress.phase == self.phase else None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> RunStatus:
        """``raw`` (a dict whose ``state`` is one of :data:`STATES`) as a RunStatus."""
        texts = {k: text_or_none(raw.get(k)) for k in ("phase", "error", "preset", "config_hash")}
        times = {k: number_or_none(raw.get(k)) for k in ("created", "started", "finished",
                                                            "updated")}
        counts = {k: number_or_none(raw.get(k), int) for k in ("pid", "pid_start", "threads")}
        return cls(state=raw["state"], **texts, **times, **counts,
                   progress=Progress.parse(raw.get("progress")))


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
        """The run's validated config; :class:`ConfigError` when it is unreadable or invalid
        (e.g. edited by hand, or not UTF-8)."""
        path = self.path / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{path} cannot be read: {type(err).__name__}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a config")
        return validate_config(data)

    # -- status -----------------------------------------------------------------
    def status(self) -> RunStatus:
        """Current status. An active run whose process is gone (killed, out of memory, the
        machine restarted, or its pid now belongs to another process) becomes
        ``interrupted`` on disk, so that it can be resumed and is never shown as running."""
        return RunStatus.parse(self._live_status())

    def _live_status(self) -> dict[str, Any]:
        status = self._stored_status()
        pid, start = status.get("pid"), status.get("pid_start")
        if not isinstance(pid, int) or isinstance(pid, bool):
            pid, start = read_job_pid(self.path)
            status = status | {"pid": pid, "pid_start": start}
        if status["state"] == "running" and pid is None:
            # Every running run records its process (execute, or the queue's job.pid): a
            # status without one was damaged, and would otherwise show "running" forever.
            status = status | {"state": INTERRUPTED, "finished": time.time(),
                               "error": "status.json names no process for this running run "
                                        "(damaged); it can be resumed from its last "
                                        "checkpoint"}
            self._keep(status)
        elif status["state"] in ACTIVE and pid is not None and not pid_alive(pid, start):
            # The process may have written its final state between the read above and the
            # check; it is gone now, so what the file holds at this point is final.
            if self._stored_status()["state"] not in ACTIVE:
                return self._live_status()
            status = status | {"state": INTERRUPTED, "finished": time.time(),
                               "error": "the run's process ended without finishing (killed, "
                                        "out of memory or a restart); it can be resumed "
                                        "from its last checkpoint"}
            self._keep(status)
        return status

    def recorded_status(self) -> RunStatus:
        """``status.json`` as written, without checking the run's process (so without
        writing): for reports and progress lines of another job's run."""
        return RunStatus.parse(self._stored_status())

    def _keep(self, status: dict[str, Any]) -> None:
        """Record a status found while reading one; a listing on a full or read-only disk
        goes on with it unrecorded (the next read finds the same)."""
        try:
            write_json_atomic(self.path / "status.json", status)
        except OSError:
            pass

    def _stored_status(self) -> dict[str, Any]:
        """``status.json`` as written, or a ``failed`` status naming why it cannot be read."""
        try:
            status = json.loads((self.path / "status.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {"state": "failed", "error": "status.json is missing or unreadable"}
        if not isinstance(status, dict) or status.get("state") not in STATES:
            return {"state": "failed", "error": "status.json is damaged"}
        return status

    def set_status(self, state: str, **extra: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        old: Any = {}
        try:
            old = json.loads((self.path / "status.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
        old = old if isinstance(old, dict) else {}  # a damaged file is replaced, not read
        status = old | extra | {"state": state, "updated": time.time()}
        if "phase" in extra and extra["phase"] != old.get("phase"):
            status["progress"] = None  # a new phase reports its own progress
        try:
            write_json_atomic(self.path / "status.json", status)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            # A full disk has no room for a second copy: rewrite the file in place (truncating
            # frees its blocks first), so the run's end is still recorded.
            (self.path / "status.json").write_text(json.dumps(status, default=_json_default))

    def progress(self, phase: str, unit: str,
                 min_interval_s: float = 0.5) -> Callable[[int, int, str], None]:
        """A callback ``(done, total, detail)`` that records the progress of ``phase`` in
        ``status.json`` (``progress``: phase, done, total, unit, detail and the seconds left
        at the phase's speed so far), at most every ``min_interval_s`` and always at the
        end."""
        started = time.time()
        last = [0.0]

        def report(done: int, total: int, detail: str = "") -> None:
            now = time.time()
            if now - last[0] < min_interval_s and done < total:
                return
            last[0] = now
            eta = (now - started) / done * (total - done) if done else None
            self.set_status("running", progress={
                "phase": phase, "done": done, "total": total, "unit": unit,
                "detail": detail, "eta_s": round(eta, 1) if eta is not None else None})

        return report

    # -- progress ---------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
            fh.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """Per-round records written so far (a half-written or damaged line is skipped)."""
        p = self.path / "metrics.jsonl"
        try:
            lines = p.read_text(errors="replace").splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("round"), int):
                out.append(record)
        return out

    def keep_metrics_until(self, last_round: int) -> None:
        """Drop the records after ``last_round`` (a resumed run recomputes them)."""
        kept = [r for r in self.metrics() if r["round"] <= last_round]
        tmp = self.path / f".metrics.jsonl.{secrets.token_hex(4)}.tmp"
        tmp.write_text("".join(json.dumps(r, default=_json_default) + "\n" for r in kept))
        os.replace(tmp, self.path / "metrics.jsonl")

    def summary(self) -> dict[str, Any] | None:
        """The run's results, or None when missing, unreadable or not a JSON object (a
        damaged file must not break listings; pages that show it say which file)."""
        try:
            summary = json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / "summary.json", summary)

    def log(self, message: str) -> None:
        """Append a line to ``log.txt``; on a full (or read-only) disk the line is lost, not
        the run's way to record how it ended."""
        try:
            with open(self.path / "log.txt", "a") as fh:
                fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        except OSError:
            pass

    # -- cancellation -------------------------------------------------------------
    def request_cancel(self) -> None:
        (self.path / "cancel").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()

    def clear_cancel(self) -> None:
        """Forget an earlier stop request (before a resume: it must not end the new job)."""
        (self.path / "cancel").unlink(missing_ok=True)

    @property
    def artifacts(self) -> Path:
        p = self.path / "artifacts"
        p.mkdir(exist_ok=True)
        return p
