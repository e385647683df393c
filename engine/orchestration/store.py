"""The run store: the runs under a root, their SQLite index, and finding a finished run.

The runs root is ``--out DIR``, else ``$FEDSCT_RUNS_DIR``, else ``./runs``. The index
(``<root>/index.sqlite``) is a cache of the run folders for fast listing: rebuilt from the
folders when missing or damaged, and refreshed from a folder whenever a listing finds a row
that may be stale, so the folders stay the source of truth.
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
from pathlib import Path
from typing import Any

import yaml

from engine.core.config import ExperimentConfig, config_hash
from engine.core.run_folder import ACTIVE, RunFolder, write_json_atomic


def runs_root(root: str | Path | None = None) -> Path:
    """The runs root: ``root`` if given, else ``$FEDSCT_RUNS_DIR``, else ``./runs``."""
    return Path(root or os.environ.get("FEDSCT_RUNS_DIR") or "runs").resolve()


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
                # The run writes only its folder: an active row may be stale, so read the
                # whole row from the folder and keep the index up to date.
                row = self._row(RunFolder(path))
                rec = dict(zip(self.COLUMNS, row, strict=True))
                if rec["state"] not in ACTIVE:
                    self.upsert(RunFolder(path))
            out.append(rec)
        return out


def find_finished_run(cfg: ExperimentConfig, root: Path) -> RunFolder | None:
    """A finished run in ``root`` with exactly this config, if any."""
    want = config_hash(cfg)
    for status_file in sorted(root.glob("*/status.json")):
        try:
            status = json.loads(status_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if status.get("config_hash") == want and status.get("state") == "done":
            run = RunFolder(status_file.parent)
            if run.summary() is not None:
                return run
    return None
