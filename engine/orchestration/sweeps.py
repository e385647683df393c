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
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.config import ConfigError, ExperimentConfig
from engine.core.run_folder import RunFolder, write_json_atomic
from engine.orchestration.experiment import execute
from engine.orchestration.presets import Cell, build_config, sweep_spec
from engine.orchestration.store import create_run, find_finished_run, runs_root

CANCEL_FILE = "cancel"
INVERSION_COLUMNS = ("ssim_body", "floor_ssim_body", "ssim", "psnr_db", "ssim_ct",
                     "psnr_db_ct", "ssim_coarse")


def table_row(label: str, sets: list[str], run: RunFolder,
              s: dict[str, Any]) -> dict[str, Any]:
    """One table row: the cell's settings, final sCT metrics and every attack's AUCs.

    Settings that sweeps vary are columns of their own (``dp_enabled``, ``noise_multiplier``,
    ``clip_norm``, ``secure_aggregation``, ``aggregator``, ``prune_fraction``, ``loss``,
    ``norm``, ``batch_size``, ``local_epochs``, ``image_size``, ``dp_level``), read from the
    run's config, and the ε the run reached (``epsilon``, null = ∞).
    Inversion results are ``inversion_<metric>`` (means over clients) and
    ``inversion_ssim_body[<center>]``. ``s`` is the run's summary.
    """
    cfg = run.config()
    fin = (s.get("federation") or {}).get("final") or {}
    dp = (s.get("federation") or {}).get("dp") or {}
    row: dict[str, Any] = {"cell": label, "overrides": " ".join(sets), "run_id": run.run_id,
                           "dp_enabled": cfg.defenses.dp.enabled,
                           "dp_level": cfg.defenses.dp.level,
                           "noise_multiplier": dp.get("noise_multiplier",
                                                      cfg.defenses.dp.noise_multiplier),
                           "epsilon": dp.get("epsilon") if cfg.defenses.dp.enabled else None,
                           "clip_norm": cfg.defenses.dp.clip_norm,
                           "secure_aggregation": cfg.defenses.secure_aggregation,
                           "aggregator": cfg.federation.aggregator,
                           "prune_fraction": cfg.defenses.prune_fraction,
                           "loss": cfg.federation.loss, "norm": cfg.model.norm,
                           "batch_size": cfg.federation.batch_size,
                           "local_epochs": cfg.federation.local_epochs,
                           "image_size": cfg.data.image_size,
                           "mae_hu": fin.get("mae_hu"), "psnr_db": fin.get("psnr_db"),
                           "ssim": fin.get("ssim")}
    mia = s.get("mia")
    if mia:
        for attack, v in mia["variants"].items():
            row[f"auc_pooled[{attack}]"] = v["pooled_auc"]
            for center, auc in v["auc"].items():
                row[f"auc[{attack}][{center}]"] = auc
        verdict_attack = mia.get("verdict_attack") or mia["attack"]
        pooled = ((mia["variants"].get(verdict_attack) or {}).get("patient") or {}).get(
            "pooled") or {}
        row |= {"mia_attack": mia.get("attack"), "patient_auc_pooled": pooled.get("auc"),
                "patient_auc_ci_pooled": pooled.get("auc_ci"),
                "mia_verdict": (mia.get("verdict") or {}).get("overall"),
                "mia_verdict_attack": mia.get("verdict_attack")}
    poison = s.get("poisoning")
    row["optimizer"] = cfg.federation.optimizer
    if poison:
        cell = poison["cells"][0]
        row |= {"poison_kind": poison["kind"], "malicious": " ".join(poison["malicious_names"]),
                "noise_std": poison["noise_std"], "poison_target": poison["target"],
                "baseline_mae_hu": poison["baseline"][cfg.federation.aggregator]["mae_hu"],
                "mae_ratio": cell["mae_ratio"],
                "detected": " ".join(poison["detection"]["detected"])}
    inv = s.get("inversion")
    if inv:
        row["inversion_round"] = next(iter(inv["per_client"].values()))["round"]
        row |= {f"inversion_{k}": inv[k] for k in INVERSION_COLUMNS}
        cal = inv.get("calibration") or {}
        row |= {"inversion_verdict": inv.get("verdict"),
                "inversion_final_loss": float(np.mean([v["final_loss"]
                                                       for v in inv["per_client"].values()])),
                "inversion_tv_weight": cfg.attacks.inversion.tv_weight,
                "inversion_adam": cfg.attacks.inversion.adam,
                "inversion_iterations": inv.get("iterations"),
                "inversion_restarts": inv.get("restarts"),
                "calibration_ssim_body": cal.get("ssim_body"),
                "calibration_floor_ssim_body": cal.get("floor_ssim_body")}
        for center, v in inv["per_client"].items():
            row[f"inversion_ssim_body[{center}]"] = v["ssim_body"]
    return row


def sweep_folder(name: str, sets: list[str] | tuple = (), root: str | Path | None = None) -> Path:
    """``<runs root>/sweeps/<name>-<hash of the base and cells>/`` (not created)."""
    spec = sweep_spec(name)
    cells = [list(c) + list(sets) for c in spec["cells"]]
    digest = hashlib.sha256(json.dumps([spec["base"], cells]).encode()).hexdigest()[:8]
    return runs_root(root) / "sweeps" / f"{name}-{digest}"


def run_sweep(name: str, *, root: str | Path | None = None, sets: list[str] | tuple = (),
              progress: Callable[[str], None] = print,
              heartbeat: Callable[[], None] = lambda: None) -> Path:
    """Run (or resume) sweep ``name``; returns the sweep folder.

    A ``cancel`` file in the folder (see :func:`engine.orchestration.jobs.cancel_sweep`)
    stops the sweep before its next cell and is consumed; finished cells stay and a rerun
    resumes from there. ``heartbeat`` goes to every cell's :func:`execute`.
    """
    spec = sweep_spec(name)
    cells = [Cell(spec["base"], list(own), [*own, *sets]) for own in spec["cells"]]
    configs = [build_config(c.preset, sets=c.sets) for c in cells]  # validate all first
    for key in spec.get("requires", []):
        section, field = key.split(".")
        if getattr(getattr(configs[0], section), field) is None:
            raise ConfigError(f"sweep {name!r} needs {key}: add --set {key}=...")
    return run_cells(sweep_folder(name, sets, root), cells, configs, root=root,
                     header={"name": name, "base": spec["base"],
                             "description": spec["description"], "sets": list(sets)},
                     progress=progress, heartbeat=heartbeat)


def run_cells(folder: Path, cells: list[Cell], configs: list[ExperimentConfig], *,
              root: str | Path | None, header: dict[str, Any],
              progress: Callable[[str], None] = print,
              heartbeat: Callable[[], None] = lambda: None) -> Path:
    """Run the cells (already validated as ``configs``) one after the other into ``folder``:
    ``sweep.json`` (``header`` plus progress), ``table.json``/``table.csv`` (one row per
    cell, see :func:`table_row`) and ``curves.json``. A cell whose exact config already
    finished is reused; a ``cancel`` file stops before the next cell."""
    base = runs_root(root)
    folder.mkdir(parents=True, exist_ok=True)
    state = {**header, "state": "running", "pid": os.getpid(), "cells_done": 0, "trained": 0,
             "cells": [{"label": c.label, "preset": c.preset, "overrides": c.sets,
                        "run_id": None, "reused": False} for c in cells],
             "started": time.time()}
    write_json_atomic(folder / "sweep.json", state)
    rows = []
    curves: dict[str, Any] = {}
    trained = 0
    for i, (cell, cfg) in enumerate(zip(state["cells"], configs, strict=True)):
        if (folder / CANCEL_FILE).exists():
            (folder / CANCEL_FILE).unlink(missing_ok=True)
            progress(f"cancelled after {i} of {len(cells)} cells")
            write_json_atomic(folder / "sweep.json", state | {"state": "cancelled"})
            return folder
        run = find_finished_run(cfg, base)
        if run is None:
            progress(f"[{i + 1}/{len(cells)}] {cell['label']}: training")
            run = create_run(cfg, base, preset=cell["preset"])
            write_json_atomic(folder / "sweep.json", state | {"current_run": run.run_id})
            if execute(run, heartbeat=heartbeat) is None:
                if run.status().get("state") == "cancelled":
                    (folder / CANCEL_FILE).unlink(missing_ok=True)
                    write_json_atomic(folder / "sweep.json", state | {"state": "cancelled"})
                    return folder
                write_json_atomic(folder / "sweep.json", state | {"state": "failed"})
                raise RuntimeError(f"sweep cell {cell['label']!r} failed: "
                                   f"{run.status().get('error')} (see {run.path}/log.txt)")
            trained += 1
        else:
            cell["reused"] = True
            progress(f"[{i + 1}/{len(cells)}] {cell['label']}: reusing {run.run_id}")
        cell["run_id"] = run.run_id
        summary = run.summary() or {}
        rows.append(table_row(cell["label"], cell["overrides"], run, summary)
                    | {"preset": cell["preset"]})
        curves[run.run_id] = (summary.get("federation") or {}).get("history")
        state |= {"trained": trained, "cells_done": i + 1, "updated": time.time()}
        write_json_atomic(folder / "sweep.json", state)
        write_table(folder, rows)
        write_json_atomic(folder / "curves.json", curves)
    (folder / CANCEL_FILE).unlink(missing_ok=True)  # a stop that came too late
    write_json_atomic(folder / "sweep.json", state | {"state": "done"})
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
