"""Finished runs that carry one attack's results, as the attack pages list them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import yaml

from engine.runs import RunFolder, RunIndex


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
