"""Run folders and the SQLite run index.

One experiment = one folder under the runs root (``FEDSCT_RUNS_DIR``, default ``./runs``)::

    <run_id>/config.yaml      the validated config
    <run_id>/status.json      {"state": queued|running|done|failed|cancelled, ...} (atomic)
    <run_id>/metrics.jsonl    one JSON record per round (appended, flushed)
    <run_id>/summary.json     final results (atomic; only for finished runs)
    <run_id>/checkpoints/     final global model
    <run_id>/server_view/     what the server observed (see engine.federation.server_view)
    <run_id>/artifacts/       images for the dashboard and reports
    <run_id>/log.txt          the run's log
    <run_id>/job.pid          process id of a background run (engine.jobs)

The index (``<root>/index.sqlite``) is a cache of the folders for fast listing; it is rebuilt
from the folders when missing or damaged, so the folders are the source of truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.config import ExperimentConfig, config_hash, validate_config

STATES = ("queued", "running", "done", "failed", "cancelled")
JOB_PID_FILE = "job.pid"  # written by the process that launched a background run
ACTIVE = ("queued", "running")


def runs_root(root: str | Path | None = None) -> Path:
    """The runs root: ``root`` if given, else ``$FEDSCT_RUNS_DIR``, else ``./runs``."""
    return Path(root or os.environ.get("FEDSCT_RUNS_DIR") or "runs").resolve()


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
        RunIndex(self.root).upsert(self)

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


def create_run(cfg: ExperimentConfig, root: str | Path | None = None,
               preset: str | None = None) -> RunFolder:
    """Make a new run folder holding ``cfg`` with state ``queued``."""
    base = runs_root(root)
    base.mkdir(parents=True, exist_ok=True)
    label = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in (cfg.name or "run"))
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{label[:40]}-{secrets.token_hex(2)}"
    path = base / run_id
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    run = RunFolder(path)
    write_json_atomic(path / "status.json", {"state": "queued", "created": time.time(),
                                             "preset": preset,
                                             "config_hash": config_hash(cfg)})
    RunIndex(base).upsert(run)
    return run


def open_run(run_id: str, root: str | Path | None = None) -> RunFolder:
    """The run folder of ``run_id``; a clear error when it does not exist."""
    base = runs_root(root)
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise FileNotFoundError(f"{run_id!r} is not a run id")
    path = base / run_id
    if not (path / "status.json").exists():
        raise FileNotFoundError(f"no run {run_id!r} under {base}")
    return RunFolder(path)


def delete_run(run_id: str, root: str | Path | None = None) -> None:
    """Delete a finished run's folder and index row (active runs must be cancelled first)."""
    run = open_run(run_id, root)
    if run.status().get("state") in ACTIVE:
        raise RuntimeError(f"run {run_id} is still active; cancel it before deleting")
    shutil.rmtree(run.path)
    RunIndex(run.root).remove(run_id)


class RunIndex:
    """SQLite index of the runs under a root (a cache; folders are the truth)."""

    COLUMNS = ("run_id", "created", "name", "preset", "state", "aggregator", "rounds",
               "secure_aggregation", "final_mae_hu", "wall_s")

    def __init__(self, root: str | Path | None = None):
        self.root = runs_root(root)
        self.db = self.root / "index.sqlite"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the index; the connection is closed afterwards (the dashboard
        opens the index on every rerun)."""
        con = sqlite3.connect(self.db, timeout=10)
        try:
            with con:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, created REAL,"
                    " name TEXT, preset TEXT, state TEXT, aggregator TEXT, rounds INTEGER,"
                    " secure_aggregation INTEGER, final_mae_hu REAL, wall_s REAL)"
                )
                yield con
        finally:
            con.close()

    @staticmethod
    def _row(run: RunFolder) -> tuple:
        status = run.status()
        try:
            cfg = yaml.safe_load((run.path / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            cfg = {}
        summary = run.summary() or {}
        fed = cfg.get("federation", {})
        final = (summary.get("federation") or {}).get("final") or {}
        return (run.run_id, status.get("created"), cfg.get("name", ""), status.get("preset"),
                status.get("state"), fed.get("aggregator"), fed.get("rounds"),
                int(bool(cfg.get("defenses", {}).get("secure_aggregation"))),
                final.get("mae_hu"), (summary.get("timing") or {}).get("wall_s"))

    def upsert(self, run: RunFolder) -> None:
        try:
            with self._connect() as con:
                con.execute(f"INSERT OR REPLACE INTO runs VALUES ({','.join('?' * 10)})",
                            self._row(run))
        except sqlite3.DatabaseError:
            self.rebuild()

    def remove(self, run_id: str) -> None:
        with self._connect() as con:
            con.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def rebuild(self) -> None:
        """Recreate the index from the run folders (after damage or manual edits)."""
        self.db.unlink(missing_ok=True)
        with self._connect() as con:
            for p in sorted(self.root.iterdir()):
                if (p / "status.json").exists():
                    con.execute(f"INSERT OR REPLACE INTO runs VALUES ({','.join('?' * 10)})",
                                self._row(RunFolder(p)))

    def list(self) -> list[dict[str, Any]]:
        """All runs, newest first; live state is taken from each folder's status."""
        if not self.root.is_dir():
            return []
        folders = {p.name for p in self.root.iterdir() if (p / "status.json").exists()}
        try:
            with self._connect() as con:
                indexed = {r[0] for r in con.execute("SELECT run_id FROM runs")}
        except sqlite3.DatabaseError:
            indexed = set()
        if folders - indexed:  # folders copied in by hand, or a damaged index
            self.rebuild()
        with self._connect() as con:
            rows = con.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        out = []
        for row in rows:
            rec = dict(zip(self.COLUMNS, row, strict=True))
            path = self.root / rec["run_id"]
            if not path.is_dir():
                continue
            if rec["state"] in ACTIVE:
                # The row may predate the run's last writes (its process writes status.json
                # first, then the index): read the whole row from the folder.
                rec = dict(zip(self.COLUMNS, self._row(RunFolder(path)), strict=True))
            out.append(rec)
        return out
