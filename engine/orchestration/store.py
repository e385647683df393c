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
from engine.core.config.robust import rule_key
from engine.core.environment import numeric_environment, same_numbers
from engine.core.run_folder import (
    ACTIVE,
    RunFolder,
    number_or_none,
    text_or_none,
    write_json_atomic,
)
from engine.orchestration import queue
from engine.orchestration.threads import default_threads


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


RESUMABLE = ("interrupted", "failed", "cancelled")


def check_resumable(run: RunFolder) -> None:
    """``ValueError`` (one line, naming the reason) unless ``run`` can be resumed: it ended
    without finishing, ran in process (Flower runtimes start over), and its files are the
    run's own: ``status.json`` readable, ``config.yaml`` the config the run started with (its
    recorded hash), the checkpoint a round the run has recorded, of the model's shapes."""
    status = run.status()
    state = status.state
    if state not in RESUMABLE:
        raise ValueError(f"run {run.run_id} is {state}; only an interrupted, failed or "
                         "cancelled run can be resumed")
    start_again = "start the experiment again as a new run instead"
    if status.created is None:  # the failed status of a damaged or missing file
        raise ValueError(f"run {run.run_id}: {status.error}, so what the run did "
                         f"cannot be trusted; {start_again}")
    cfg = run.config()
    if status.config_hash not in (None, config_hash(cfg)):
        raise ValueError(f"run {run.run_id}: config.yaml is not the config the run started "
                         f"with (damaged or edited); {start_again}")
    if cfg.federation.runtime != "inprocess":
        raise ValueError(f"run {run.run_id} ran on federation.runtime = "
                         f"{cfg.federation.runtime!r}; resuming needs the in-process runtime: "
                         "start it again instead")
    # Here, not at the top: the command line validates configs before torch loads.
    import numpy as np

    from engine.federation.protocol import load_checkpoint
    from engine.learning.model import build_model, get_parameters

    checkpoint = load_checkpoint(run.path)
    if checkpoint is None:
        return  # nothing to trust: the run starts from round 0
    rnd, params = checkpoint
    recorded = max((r.get("round", -1) for r in run.metrics()), default=-1)
    if not 1 <= rnd <= min(cfg.federation.rounds, recorded):
        raise ValueError(f"run {run.run_id}: checkpoints/latest.npz says round {rnd}, but the "
                         f"run has {cfg.federation.rounds} rounds and recorded up to round "
                         f"{max(recorded, 0)}; delete that file to resume from round 0, or "
                         f"{start_again}")
    shapes = [np.shape(a) for a in get_parameters(build_model(cfg))]
    if [np.shape(a) for a in params] != shapes:
        raise ValueError(f"run {run.run_id}: checkpoints/latest.npz does not hold this run's "
                         f"model; delete that file to resume from round 0, or {start_again}")


# A run queued longer than this without a queue entry (and without a process) has lost its
# place: `fedsct run` creates a run and starts it at once, the queue holds every other one.
QUEUE_LOST_AFTER_S = 60.0


def lost_in_queue(run: RunFolder, in_queue: set[Path]) -> bool:
    """Mark ``run`` interrupted when it is queued, has no process and no entry in the job
    queue (a damaged or deleted entry is dropped by the queue): it would otherwise stay
    "queued" forever with no way to start, resume or delete it. Returns whether it did."""
    status = run.status()
    if (status.state != "queued" or status.pid is not None or run.path in in_queue
            or time.time() - (status.created or 0.0) < QUEUE_LOST_AFTER_S):
        return False
    run.set_status("interrupted", finished=time.time(),
                   error="its place in the job queue was lost (the queue entry was damaged "
                         "or deleted); resume it or delete it")
    return True


def delete_run(run_id: str, root: str | Path | None = None) -> None:
    """Delete a finished run's folder and index row (active runs must be cancelled first)."""
    run = open_run(run_id, root)
    if run.status().active:
        raise RuntimeError(f"run {run_id} is still active; cancel it before deleting")
    shutil.rmtree(run.path)
    RunIndex(run.root).remove(run_id)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _rule(fed: dict[str, Any]) -> str | None:
    """The index's ``aggregator``: the server's rule with its pre-aggregator
    (:func:`~engine.core.config.robust.rule_key`, ``nnm+fedmedian``)."""
    aggregator = text_or_none(fed.get("aggregator"))
    return aggregator and rule_key(aggregator, text_or_none(fed.get("pre_aggregator")))


class RunIndex:
    """SQLite index of the runs under a root (a cache; folders are the truth).

    Any damage is repaired by rebuilding from the folders: an unreadable database, a table
    with other columns (an older or newer version), rows pointing at deleted folders. A run
    folder with damaged files is listed with what can be read (state ``failed`` when its
    status is unreadable), never skipped silently and never able to break the listing.
    """

    COLUMNS = ("run_id", "created", "name", "preset", "state", "aggregator", "rounds",
               "secure_aggregation", "final_mae_hu", "wall_s", "status_mtime_ns", "config_hash")
    SCHEMA = ("CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, created REAL,"
              " name TEXT, preset TEXT, state TEXT, aggregator TEXT, rounds INTEGER,"
              " secure_aggregation INTEGER, final_mae_hu REAL, wall_s REAL,"
              " status_mtime_ns INTEGER, config_hash TEXT)")
    INSERT = f"INSERT OR REPLACE INTO runs VALUES ({','.join('?' * len(COLUMNS))})"

    def __init__(self, root: str | Path | None = None):
        self.root = runs_root(root)
        self.db = self.root / "index.sqlite"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the index; the connection is closed afterwards (the dashboard
        opens the index on every rerun). ``sqlite3.DatabaseError`` when the file is damaged
        or its table has other columns."""
        con = sqlite3.connect(self.db, timeout=10)
        try:
            with con:
                con.execute(self.SCHEMA)
                columns = tuple(r[1] for r in con.execute("PRAGMA table_info(runs)"))
                if columns != self.COLUMNS:
                    raise sqlite3.DatabaseError(f"index columns {columns} are not "
                                                f"{self.COLUMNS}")
                yield con
        finally:
            con.close()

    @staticmethod
    def _status_mtime(path: Path) -> int | None:
        """When the run's ``status.json`` last changed (ns), None when it cannot be read."""
        try:
            return (path / "status.json").stat().st_mtime_ns
        except OSError:
            return None

    @staticmethod
    def _row(run: RunFolder) -> tuple:
        """The index row of ``run``, from whatever of its files can be read."""
        mtime = RunIndex._status_mtime(run.path)  # before reading: a later change shows
        status = run.status()
        try:
            cfg = _mapping(yaml.safe_load((run.path / "config.yaml").read_text()))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            cfg = {}
        summary = run.summary() or {}
        fed = _mapping(cfg.get("federation"))
        final = _mapping(_mapping(summary.get("federation")).get("final"))
        return (run.run_id, status.created, text_or_none(cfg.get("name")) or "",
                status.preset, status.state,
                _rule(fed), number_or_none(fed.get("rounds"), int),
                int(_mapping(cfg.get("defenses")).get("secure_aggregation") is True),
                number_or_none(final.get("mae_hu")),
                number_or_none(_mapping(summary.get("timing")).get("wall_s")), mtime,
                status.config_hash)

    def upsert(self, run: RunFolder) -> None:
        try:
            with self._connect() as con:
                con.execute(self.INSERT, self._row(run))
        except sqlite3.OperationalError as err:
            if "full" not in str(err):  # "database or disk is full": keep the index as it is
                self._repair()
        except sqlite3.DatabaseError:
            self._repair()

    def remove(self, run_id: str) -> None:
        try:
            with self._connect() as con:
                con.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        except sqlite3.DatabaseError:
            self._repair()

    def _repair(self) -> None:
        """Rebuild after damage; if even that fails, listings read the folders directly."""
        with contextlib.suppress(sqlite3.DatabaseError, OSError):
            self.rebuild()

    def _folders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and (p / "status.json").is_file())

    def rebuild(self) -> None:
        """Recreate the index from the run folders (after damage or manual edits)."""
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        with self._connect() as con:
            for p in self._folders():
                con.execute(self.INSERT, self._row(RunFolder(p)))

    def _rows(self) -> list[tuple]:
        with self._connect() as con:
            return con.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()

    def list(self) -> list[dict[str, Any]]:
        """All runs, newest first; live state is taken from each folder's status."""
        if not self.root.is_dir():
            return []
        folders = {p.name for p in self._folders()}
        try:
            rows = self._rows()
            if folders - {r[0] for r in rows}:  # folders copied in by hand
                raise sqlite3.DatabaseError("runs missing from the index")
        except sqlite3.DatabaseError:
            try:
                self.rebuild()
                rows = self._rows()
            except (sqlite3.DatabaseError, OSError):  # e.g. a folder where the file belongs
                rows = sorted((self._row(RunFolder(self.root / f)) for f in folders),
                              key=lambda r: r[1] or 0.0, reverse=True)
        out = []
        in_queue: set[Path] | None = None  # read once, when a queued run needs it
        for row in rows:
            rec = dict(zip(self.COLUMNS, row, strict=True))
            path = self.root / rec["run_id"]
            if rec["run_id"] not in folders:
                continue
            if rec["state"] == "queued":
                try:
                    in_queue = in_queue if in_queue is not None else queue.folders(self.root)
                    lost_in_queue(RunFolder(path), in_queue)
                except (OSError, queue.QueueBusy):  # a full disk, a stuck queue: list as is
                    pass
            if (rec["state"] in ACTIVE
                    or self._status_mtime(path) != rec["status_mtime_ns"]):
                # A run writes only its folder (a resume from a terminal too): a row is stale
                # when the run's status changed since it was indexed, or may be while the run
                # is active; read it from the folder and keep the index up to date.
                before = rec
                rec = dict(zip(self.COLUMNS, self._row(RunFolder(path)), strict=True))
                if rec["state"] not in ACTIVE or rec["state"] != before["state"]:
                    self.upsert(RunFolder(path))
            out.append(rec)
        return out


def find_finished_run(cfg: ExperimentConfig, root: Path,
                      threads: int | None = None) -> RunFolder | None:
    """A finished run in ``root`` with exactly this config that computed its figures as a new
    run on ``threads`` torch threads in this process would (see
    :mod:`engine.core.environment`: same thread count, kernels, versions, device and
    ``federation.batched_clients``), if any. ``threads`` defaults to the count a new run gets
    (:func:`engine.orchestration.threads.default_threads`)."""
    want = config_hash(cfg)
    wanted: dict[str, Any] | None = None
    for status_file in sorted(root.glob("*/status.json")):
        try:
            status = json.loads(status_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(status, dict):
            continue
        if status.get("config_hash") == want and status.get("state") == "done":
            run = RunFolder(status_file.parent)
            summary = run.summary()
            if summary is None:
                continue
            wanted = wanted or numeric_environment(threads or default_threads())
            same_mode = (_mapping(_mapping(summary.get("config")).get("federation"))
                         .get("batched_clients") == cfg.federation.batched_clients)
            if same_mode and same_numbers(summary.get("environment"), wanted):
                return run
    return None
