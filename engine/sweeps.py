"""Sweeps: many experiments that differ in a few keys, collected into one table.

A sweep is a base preset plus a list of cells, each a list of ``--set`` overrides. Every cell
is an ordinary run in the runs root. A cell whose exact config already ran to completion is
reused instead of retrained (configs are compared by hash), so an interrupted sweep resumes
where it stopped and overlapping sweeps share runs. The sweep folder
``<runs root>/sweeps/<name>-<hash>/`` holds ``sweep.json`` (spec, cells, their run ids) and
``table.csv`` / ``table.json``, rewritten after every cell.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import ConfigError, ExperimentConfig, build_config, config_hash
from engine.runs import RunFolder, create_run, runs_root, write_json_atomic

SWEEPS: dict[str, dict[str, Any]] = {
    "mia-dp": {
        "description": (
            "Client-level DP against membership inference: mia-paper without DP, then with "
            "updates clipped to norm 5 and noise multipliers 0 … 0.03; utility (MAE) beside "
            "every attack's AUC (about 10 min)."
        ),
        "base": "mia-paper",
        "cells": [
            [],
            *[["defenses.dp.enabled=true", "defenses.dp.clip_norm=5.0",
               f"defenses.dp.noise_multiplier={s}"] for s in (0.0, 0.001, 0.003, 0.01, 0.03)],
        ],
    },
}


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


def sweep_spec(name: str) -> dict[str, Any]:
    if name not in SWEEPS:
        raise ConfigError(f"unknown sweep preset {name!r}; available: {', '.join(SWEEPS)}")
    return SWEEPS[name]


def cell_label(sets: list[str]) -> str:
    """``["defenses.dp.clip_norm=5.0"]`` → ``"clip_norm=5.0"``; no overrides → ``"baseline"``."""
    return ", ".join(key.rsplit(".", 1)[-1] + "=" + value
                     for key, value in (s.split("=", 1) for s in sets)) or "baseline"


def table_row(label: str, sets: list[str], run: RunFolder) -> dict[str, Any]:
    """One table row: the cell's settings, final sCT metrics and every attack's AUCs.

    Settings that sweeps vary are columns of their own (``dp_enabled``, ``noise_multiplier``,
    ``clip_norm``, ``secure_aggregation``, ``aggregator``), read from the run's config.
    """
    s = run.summary() or {}
    cfg = run.config()
    fin = (s.get("federation") or {}).get("final") or {}
    row: dict[str, Any] = {"cell": label, "overrides": " ".join(sets), "run_id": run.run_id,
                           "dp_enabled": cfg.defenses.dp.enabled,
                           "noise_multiplier": cfg.defenses.dp.noise_multiplier,
                           "clip_norm": cfg.defenses.dp.clip_norm,
                           "secure_aggregation": cfg.defenses.secure_aggregation,
                           "aggregator": cfg.federation.aggregator,
                           "mae_hu": fin.get("mae_hu"), "psnr_db": fin.get("psnr_db"),
                           "ssim": fin.get("ssim")}
    mia = s.get("mia")
    if mia:
        for attack, v in mia["variants"].items():
            row[f"auc_pooled[{attack}]"] = v["pooled_auc"]
            for center, auc in v["auc"].items():
                row[f"auc[{attack}][{center}]"] = auc
    return row


def run_sweep(name: str, *, root: str | Path | None = None, sets: list[str] | tuple = (),
              progress: Callable[[str], None] = print) -> Path:
    """Run (or resume) sweep ``name``; returns the sweep folder."""
    from engine.experiment import execute

    spec = sweep_spec(name)
    cells = [list(c) + list(sets) for c in spec["cells"]]
    configs = [build_config(spec["base"], sets=c) for c in cells]  # validate all first
    base = runs_root(root)
    digest = hashlib.sha256(json.dumps([spec["base"], cells]).encode()).hexdigest()[:8]
    folder = base / "sweeps" / f"{name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    state = {"name": name, "base": spec["base"], "description": spec["description"],
             "sets": list(sets),
             "cells": [{"label": cell_label(list(own)), "overrides": c, "run_id": None,
                        "reused": False} for own, c in zip(spec["cells"], cells, strict=True)],
             "started": time.time()}
    rows = []
    trained = 0
    for i, (cell, cfg) in enumerate(zip(state["cells"], configs, strict=True)):
        run = find_finished_run(cfg, base)
        if run is None:
            progress(f"[{i + 1}/{len(cells)}] {cell['label']}: training")
            run = create_run(cfg, base, preset=spec["base"])
            if execute(run) is None:
                raise RuntimeError(f"sweep cell {cell['label']!r} failed: "
                                   f"{run.status().get('error')} (see {run.path}/log.txt)")
            trained += 1
        else:
            cell["reused"] = True
            progress(f"[{i + 1}/{len(cells)}] {cell['label']}: reusing {run.run_id}")
        cell["run_id"] = run.run_id
        rows.append(table_row(cell["label"], cell["overrides"], run))
        state |= {"trained": trained, "cells_done": i + 1, "updated": time.time()}
        write_json_atomic(folder / "sweep.json", state)
        write_table(folder, rows)
    return folder


def write_table(folder: Path, rows: list[dict[str, Any]]) -> None:
    write_json_atomic(folder / "table.json", rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = folder / ".table.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(folder / "table.csv")
