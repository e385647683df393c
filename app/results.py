"""Finished runs that carry one attack's results, and background sweeps' progress, as the
attack pages list them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st
import yaml

from engine.core.run_folder import ACTIVE, JOB_PID_FILE, RunFolder, pid_alive
from engine.orchestration.presets import sweep_spec
from engine.orchestration.store import RunIndex
from engine.orchestration.sweeps import sweep_folder


@st.cache_data(max_entries=256)
def _read_json(path: str, mtime: float) -> Any:
    # mtime is part of the cache key so a rewritten file is read again.
    return json.loads(Path(path).read_text())


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (half-written, old)."""
    try:
        return _read_json(str(path), path.stat().st_mtime)
    except (OSError, ValueError):
        return None


@st.cache_data(max_entries=256)
def _read_yaml(path: str, mtime: float) -> Any:
    return yaml.safe_load(Path(path).read_text())


def attack_enabled(run: RunFolder, attack: str) -> bool:
    """Whether the run's stored config enabled ``attacks.<attack>`` (False if unreadable)."""
    path = run.path / "config.yaml"
    try:
        cfg = _read_yaml(str(path), path.stat().st_mtime)
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(cfg, dict):
        return False
    section = (cfg.get("attacks") or {}).get(attack) or {}
    return isinstance(section, dict) and bool(section.get("enabled"))


@dataclass
class ResultRun:
    """A finished run and its ``summary.json``."""

    run: RunFolder
    created: float
    summary: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.summary.get("config") or {}

    @property
    def name(self) -> str:
        return self.config.get("name") or "run"

    @property
    def dp_text(self) -> str:
        """DP in a few words with its ε, or "" without DP."""
        return dp_words((self.summary.get("federation") or {}).get("dp") or {})


def dp_words(dp: dict[str, Any]) -> str:
    """A ``federation.dp`` summary block in a few words: level and ε ("" without DP)."""
    if not dp.get("enabled"):
        return ""
    unit = "patient-level DP" if dp.get("level") == "sample" else "hospital-level DP"
    eps = dp.get("epsilon")
    if "epsilon" not in dp:  # an older run: σ only, no accountant
        return f"DP σ {dp.get('noise_multiplier', 0):g} (no ε computed)"
    if eps is None:
        return f"{unit}, ε = ∞"
    return f"{unit}, ε = {eps:.3g}" + ("" if dp.get("meaningful") else " (no meaningful guarantee)")


def finished_runs_with(key: str, attack: str) -> tuple[list[ResultRun], list[Path]]:
    """Finished runs whose summary has a ``key`` block, newest first; and the summary files
    of finished runs whose config enabled ``attacks.<attack>`` but that are missing or
    unreadable."""
    index = RunIndex()
    out, damaged = [], []
    for rec in index.list():
        if rec["state"] != "done":
            continue
        run = RunFolder(index.root / rec["run_id"])
        summary = read_json(run.path / "summary.json")
        if isinstance(summary, dict) and isinstance(summary.get(key), dict):
            out.append(ResultRun(run, rec["created"] or 0.0, summary))
        elif attack_enabled(run, attack):
            damaged.append(run.path / "summary.json")
    return out, damaged


@dataclass
class Sweep:
    """What a sweep folder holds: progress (``sweep.json``), rows (``table.json``) and
    curves (``curves.json``); unreadable files are listed in ``damaged``."""

    name: str
    folder: Path
    state: str | None = None  # None: never started
    cells_done: int = 0
    total: int = 0
    current: str | None = None
    rows: list[dict[str, Any]] | None = None
    damaged: list[Path] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def pid(self) -> int | None:
        try:
            return int((self.folder / JOB_PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    def curves(self) -> dict[str, Any] | None:
        """``curves.json`` ({run id: history}), or None when missing or damaged."""
        data = read_json(self.folder / "curves.json")
        return data if isinstance(data, dict) else None


def read_sweep(name: str, sets: tuple[str, ...] = ()) -> Sweep:
    """The state of sweep ``name`` run with ``sets`` in the runs root (its
    :func:`engine.orchestration.sweeps.sweep_folder`)."""
    folder = sweep_folder(name, sets)
    sweep = Sweep(name, folder, total=len(sweep_spec(name)["cells"]))
    spec_path, table_path = folder / "sweep.json", folder / "table.json"
    if spec_path.exists():
        spec = read_json(spec_path)
        try:
            cells_done = int(spec.get("cells_done") or 0) if isinstance(spec, dict) else None
        except (TypeError, ValueError):
            cells_done = None
        if isinstance(spec, dict) and cells_done is not None:
            sweep.state = str(spec.get("state") or "running")
            sweep.cells_done = cells_done
            cells = spec.get("cells")
            if isinstance(cells, list) and cells:
                sweep.total = len(cells)
                if sweep.cells_done < len(cells) and isinstance(cells[sweep.cells_done], dict):
                    sweep.current = cells[sweep.cells_done].get("label")
            # A background sweep whose process ended without saying so was killed.
            if sweep.active and sweep.pid and not pid_alive(sweep.pid):
                sweep.state = "ended"
        else:
            sweep.damaged.append(spec_path)
    if table_path.exists():
        rows = read_json(table_path)
        if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
            sweep.rows = rows
        else:
            sweep.damaged.append(table_path)
    return sweep
