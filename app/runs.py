"""Helpers of the Runs page: list, filter, open, delete and compare run folders.

Everything is read from the run folders (and the run index); a damaged file is reported as a
problem naming the file, never raised.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import yaml

from app.results import dp_words
from app.ui import PAGES_DIR, STATE_TEXT
from engine.core.run_folder import RunFolder
from engine.orchestration.store import RunIndex

ATTACKS = {"mia": "membership", "inversion": "inversion", "poisoning": "poisoning"}
# Summary key → (page, URL parameter that page reads the run id from, link label).
DETAIL_PAGES = {
    "federation": (PAGES_DIR / "federation.py", "run", "Training results (Federation)"),
    "mia": (PAGES_DIR / "membership.py", "mia_run", "Membership inference attack"),
    "inversion": (PAGES_DIR / "inversion.py", "inv_run", "Gradient inversion attack"),
    "poisoning": (PAGES_DIR / "poisoning.py", "poi_run", "Poisoning attack"),
}
# Summary key, label, decimals shown.
METRICS = (("mae_hu", "Average error, MAE (HU) — lower is better", 0),
           ("psnr_db", "Image quality, PSNR (dB) — higher is better", 2),
           ("ssim", "Structural similarity, SSIM (0–1) — higher is better", 3))


@dataclass
class RunRow:
    """One run as the page shows it; ``problems`` name the damaged files."""

    run_id: str
    path: Path
    created: float | None
    name: str
    state: str
    aggregator: str | None
    rounds: int | None
    secure_aggregation: bool
    summary: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def federation(self) -> dict[str, Any]:
        fed = (self.summary or {}).get("federation")
        return fed if isinstance(fed, dict) else {}

    @property
    def final(self) -> dict[str, float] | None:
        final = self.federation.get("final")
        return final if isinstance(final, dict) else None

    @property
    def history(self) -> list[dict[str, Any]]:
        history = self.federation.get("history")
        return [h for h in history if isinstance(h, dict) and "round" in h and "mae_hu" in h] \
            if isinstance(history, list) else []

    @property
    def attacks(self) -> list[str]:
        return [label for key, label in ATTACKS.items() if isinstance((self.summary or {})
                                                                       .get(key), dict)]

    @property
    def defenses(self) -> str:
        fed = self.federation
        parts = []
        if fed.get("secure_aggregation") or (not fed and self.secure_aggregation):
            parts.append("secure aggregation")
        dp = fed.get("dp") if isinstance(fed.get("dp"), dict) else {}
        if dp.get("enabled"):
            parts.append(dp_words(dp))
        if fed.get("prune_fraction"):
            parts.append(f"pruning {fed['prune_fraction']:.0%}")
        return ", ".join(parts) or ("none" if fed or self.state == "done" else "")

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        mae = f" · MAE {self.final['mae_hu']:.0f} HU" if self.final else ""
        return f"{when} · {self.name or 'run'} · {STATE_TEXT.get(self.state, self.state)}{mae}"


def read_summary(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's summary.json (None before the run finished) and a problem, if unreadable."""
    p = path / "summary.json"
    if not p.exists():
        return None, None
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"`{p.name}` of run `{path.name}` is damaged (not readable JSON)"
    if not isinstance(data, dict):
        return None, f"`{p.name}` of run `{path.name}` is damaged (unexpected content)"
    return data, None


def _read_config(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}, f"`config.yaml` of run `{path.name}` is missing or damaged"
    return (cfg, None) if isinstance(cfg, dict) else \
        ({}, f"`config.yaml` of run `{path.name}` is damaged (unexpected content)")


def _scan(root: Path) -> list[dict[str, Any]]:
    """Index-like records straight from the folders (when the index can't be read)."""
    out = []
    for p in root.iterdir() if root.is_dir() else []:
        if not (p / "status.json").exists():
            continue
        run = RunFolder(p)
        status = run.status()
        cfg, _ = _read_config(p)
        fed = cfg.get("federation") if isinstance(cfg.get("federation"), dict) else {}
        defenses = cfg.get("defenses") if isinstance(cfg.get("defenses"), dict) else {}
        out.append({"run_id": p.name, "created": status.get("created"),
                    "name": cfg.get("name", ""), "state": status.get("state"),
                    "aggregator": fed.get("aggregator"), "rounds": fed.get("rounds"),
                    "secure_aggregation": defenses.get("secure_aggregation")})
    return sorted(out, key=lambda r: r["created"] or 0, reverse=True)


def list_runs(root: Path) -> list[RunRow]:
    """All runs under ``root``, newest first, with their summaries read (damage noted)."""
    try:
        records = RunIndex(root).list()
    except (OSError, ValueError, sqlite3.Error):  # a damaged summary.json breaks a rebuild
        records = _scan(root)
    rows = []
    for rec in records:
        path = root / rec["run_id"]
        summary, problem = read_summary(path)
        _, cfg_problem = _read_config(path)
        rows.append(RunRow(run_id=rec["run_id"], path=path, created=rec.get("created"),
                           name=rec.get("name") or "", state=rec.get("state") or "failed",
                           aggregator=rec.get("aggregator"), rounds=rec.get("rounds"),
                           secure_aggregation=bool(rec.get("secure_aggregation")),
                           summary=summary,
                           problems=[p for p in (problem, cfg_problem) if p]))
    return rows


def filter_runs(rows: list[RunRow], states: list[str], text: str) -> list[RunRow]:
    """Rows in one of ``states`` (all when empty) whose name or id contains ``text``."""
    needle = text.strip().lower()
    return [r for r in rows if (not states or r.state in states)
            and (not needle or needle in r.name.lower() or needle in r.run_id.lower())]


def runs_frame(rows: list[RunRow]) -> pd.DataFrame:
    return pd.DataFrame({
        "Started": [time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created or 0))
                    for r in rows],
        "Name": [r.name or "run" for r in rows],
        "State": [STATE_TEXT.get(r.state, r.state) for r in rows],
        "Aggregation rule": [r.aggregator for r in rows],
        "Defenses": [r.defenses for r in rows],
        "Final MAE (HU)": [r.final["mae_hu"] if r.final else None for r in rows],
        "Attacks": [", ".join(r.attacks) for r in rows],
        "Run id": [r.run_id for r in rows],
    })


def detail_links(row: RunRow) -> list[tuple[Path, str, dict[str, str]]]:
    """(page, label, query params) of each page that shows this run in detail."""
    keys = ["federation", *(k for k in ATTACKS if k in (row.summary or {}))]
    return [(DETAIL_PAGES[k][0], DETAIL_PAGES[k][2], {DETAIL_PAGES[k][1]: row.run_id})
            for k in keys]


def compare_frame(a: RunRow, b: RunRow) -> pd.DataFrame:
    """Final metrics of two finished runs and the difference (second minus first)."""
    fa, fb = a.final or {}, b.final or {}
    rows = []
    for key, label, digits in METRICS:
        va, vb = fa.get(key), fb.get(key)
        diff = vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None
        rows.append({"Measure": label, **{col: None if v is None else round(v, digits)
                                          for col, v in (("First run", va), ("Second run", vb),
                                                         ("Difference (second − first)", diff))}})
    return pd.DataFrame(rows)


def curves_figure(a: RunRow, b: RunRow) -> go.Figure:
    """Both runs' MAE per round in one chart."""
    fig = go.Figure()
    for row, tag in ((a, "First"), (b, "Second")):
        hist = row.history
        fig.add_trace(go.Scatter(x=[h["round"] for h in hist], y=[h["mae_hu"] for h in hist],
                                 mode="lines+markers", name=f"{tag}: {row.name or row.run_id}",
                                 hovertemplate="round %{x}: %{y:.0f} HU<extra></extra>"))
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title="Average error, MAE (HU) per round — lower is better",
                      xaxis_title="round (0 = untrained)", yaxis_title="MAE (HU)",
                      legend={"orientation": "h", "y": -0.25})
    return fig
