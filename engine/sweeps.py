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

from engine.config import ConfigError, ExperimentConfig, build_config, config_hash
from engine.presets import HARDENED_DEFENSES
from engine.runs import RunFolder, create_run, runs_root, write_json_atomic

# Rules that run with 4 centers (Krum, Multi-Krum need > 2f+2 = 4 and Bulyan ≥ 4f+3 = 7
# centers against one attacker, so they are left out of the 4-center study).
POISON_AGGREGATORS: dict[str, list[str]] = {
    "fedavg": [],
    "fedprox": ["federation.aggregator=fedprox", "federation.fedprox_mu=0.01"],
    "fedmedian": ["federation.aggregator=fedmedian"],
    "trimmed_mean": ["federation.aggregator=trimmed_mean"],
}
# Low and high level of each noise kind: data noise in normalised units, update noise per
# parameter in absolute units.
POISON_LEVELS: dict[str, tuple[float, float]] = {"data_noise": (0.1, 1.0),
                                                 "update_noise": (0.03, 0.3)}
# Two attackers out of four are beyond what any robust rule here tolerates (the median needs
# an honest majority; a 25 % trim of 4 values equals the median): pairs are run with the
# averaging rules and the median, to show where robustness ends.
PAIR_AGGREGATORS = ("fedavg", "fedprox", "fedmedian")
# The privacy budgets of the DP studies (ε after the last round; no DP is ε = ∞).
DP_EPSILONS = (64.0, 16.0, 4.0, 1.0)


def _as_sets(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` → ``["a.b=1"]`` (the ``--set`` form of a nested override)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _as_sets(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def _poison_cells() -> list[list[str]]:
    cells = [list(a) for a in POISON_AGGREGATORS.values()]  # clean baselines first
    singles = [[c] for c in range(4)]
    pairs = [[a, b] for a in range(4) for b in range(a + 1, 4)]
    for kind, levels in POISON_LEVELS.items():
        for std in levels:
            for name, agg in POISON_AGGREGATORS.items():
                for bad in singles + (pairs if name in PAIR_AGGREGATORS else []):
                    cells.append([*agg, "attacks.poisoning.enabled=true",
                                  f"attacks.poisoning.kind={kind}",
                                  f"attacks.poisoning.malicious_centers={bad}",
                                  f"attacks.poisoning.noise_std={std}"])
    return cells


def _model_poison_cells() -> list[list[str]]:
    cells = [list(a) for a in POISON_AGGREGATORS.values()]
    for kind in ("sign_flip", "scaling", "alie"):
        for agg in POISON_AGGREGATORS.values():
            cells.append([*agg, "attacks.poisoning.enabled=true",
                          f"attacks.poisoning.kind={kind}"])
    return cells


def _data_noise_cells() -> list[list[str]]:
    cells = []
    for loss in ("l1", "mse"):
        for opt in ("adam", "sgd"):
            train = [f"federation.loss={loss}", f"federation.optimizer={opt}"]
            if opt == "sgd":
                train.append("federation.lr=0.1")
            cells.append(train)
            cells += [[*train, "attacks.poisoning.enabled=true",
                       "attacks.poisoning.kind=data_noise", f"attacks.poisoning.target={t}",
                       "attacks.poisoning.noise_std=1.0"] for t in ("mri", "ct", "both")]
    return cells


SWEEPS: dict[str, dict[str, Any]] = {
    "mia-dp": {
        "description": (
            "Differential privacy against membership inference at meaningful ε: mia-paper "
            "without DP (ε = ∞), then hospital-level DP (updates clipped to norm 5) and "
            "patient-level DP-SGD (per-patient gradients clipped to norm 1) at ε 64, 16, 4 "
            "and 1 (δ 1e-5); patient-level AUCs with intervals beside the model's MAE."
        ),
        "base": "mia-paper",
        "cells": [
            [],
            *[["defenses.dp.enabled=true", "defenses.dp.level=client",
               "defenses.dp.clip_norm=5.0", f"defenses.dp.target_epsilon={e}"]
              for e in DP_EPSILONS],
            *[["defenses.dp.enabled=true", "defenses.dp.level=sample",
               "defenses.dp.clip_norm=1.0", f"defenses.dp.target_epsilon={e}"]
              for e in DP_EPSILONS],
        ],
    },
    "inversion-factors": {
        "description": (
            "Why a design leaks: inversion-easy, then one factor changed at a time — L1 loss, "
            "InstanceNorm, 4 slices per step, 4 local steps, a late round, 64 px, Adam (one "
            "step, attacked with and without reading Adam's step back; and 4 steps); "
            "reconstruction SSIM beside the mean-image floor, calibrated verdicts."
        ),
        "base": "inversion-easy",
        "cells": [
            [],
            ["federation.loss=l1"],
            ["model.norm=instance"],
            ["data.slices_per_patient=4", "federation.batch_size=4"],
            ["federation.local_epochs=4"],
            ["federation.server_view_rounds=[30]", "attacks.inversion.target_round=last"],
            ["data.image_size=64"],
            ["federation.optimizer=adam", "federation.lr=0.002"],
            ["federation.optimizer=adam", "federation.lr=0.002",
             "attacks.inversion.adam=simulate"],
            ["federation.optimizer=adam", "federation.lr=0.002", "federation.local_epochs=4"],
        ],
    },
    "inversion-budget": {
        "description": (
            "How much attack is enough: ig-strong on hospital 0 with 400, 2,000 and 8,000 "
            "iterations, and at 2,000 iterations with total-variation weights 0.001, 0.01 "
            "and 0.1; matching loss, body SSIM and the calibration control at each budget."
        ),
        "base": "ig-strong",
        "cells": [
            *[["attacks.inversion.target_center=0", f"attacks.inversion.iterations={n}"]
              for n in (400, 2000, 8000)],
            *[["attacks.inversion.target_center=0", "attacks.inversion.iterations=2000",
               f"attacks.inversion.tv_weight={w}"] for w in (0.001, 0.01, 0.1)],
        ],
    },
    "inversion-defenses": {
        "description": (
            "Defenses against the inversion-easy leak: secure aggregation over 3 centers, "
            "hospital-level DP (ε 64 and 4), update pruning, 4 slices per step; "
            "reconstruction SSIM and the cost in sCT MAE (about 15 min)."
        ),
        "base": "inversion-easy",
        "cells": [
            [],
            ["defenses.secure_aggregation=true"],
            *[["defenses.dp.enabled=true", "defenses.dp.clip_norm=0.05",
               f"defenses.dp.target_epsilon={e}"] for e in (64.0, 4.0)],
            *[[f"defenses.prune_fraction={f}"] for f in (0.9, 0.99)],
            ["data.slices_per_patient=4", "federation.batch_size=4"],
        ],
    },
    "whatif": {
        "description": (
            "One patient with and without defenses: the whatif preset as is, then hardened "
            "with secure aggregation and client-level DP (clip 5, σ 0.001). Give the patient "
            "with --set data.whatif_patient=FOLDER (about 5 min)."
        ),
        "base": "whatif",
        "cells": [[], _as_sets({"defenses": HARDENED_DEFENSES})],
        "requires": ["data.whatif_patient"],
    },
    "poison-paper": {
        "description": (
            "The study's poisoning grid on poison-base: every single malicious center (and "
            "every pair for FedAvg, FedProx, FedMedian) × noise on data or on the upload × a "
            "low and a high level × FedAvg, FedProx, FedMedian, trimmed mean; clean baselines "
            "first (about 20 min)."
        ),
        "base": "poison-base",
        "cells": _poison_cells(),
    },
    "poison-model": {
        "description": (
            "Model poisoning beyond the study, 4 centers and 1 attacker: sign flip, scaling "
            "(model replacement) and A Little Is Enough against each rule (about 2 min)."
        ),
        "base": "poison-base",
        "cells": _model_poison_cells(),
    },
    "poison-data-factors": {
        "description": (
            "Which data noise hurts: strong noise (σ 1) on the MRI, the CT or both, with an "
            "L1 or MSE loss and Adam or SGD local training; FedAvg (about 2 min)."
        ),
        "base": "poison-base",
        "cells": _data_noise_cells(),
    },
}

CANCEL_FILE = "cancel"
INVERSION_COLUMNS = ("ssim_body", "floor_ssim_body", "ssim", "psnr_db", "ssim_ct",
                     "psnr_db_ct", "ssim_coarse")


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
              progress: Callable[[str], None] = print) -> Path:
    """Run (or resume) sweep ``name``; returns the sweep folder.

    A ``cancel`` file in the folder (see :func:`engine.jobs.cancel_sweep`) stops the sweep
    before its next cell and is consumed; finished cells stay and a rerun resumes from there.
    """
    from engine.experiment import execute

    spec = sweep_spec(name)
    cells = [list(c) + list(sets) for c in spec["cells"]]
    configs = [build_config(spec["base"], sets=c) for c in cells]  # validate all first
    for key in spec.get("requires", []):
        section, field = key.split(".")
        if getattr(getattr(configs[0], section), field) is None:
            raise ConfigError(f"sweep {name!r} needs {key}: add --set {key}=...")
    base = runs_root(root)
    folder = sweep_folder(name, sets, root)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"name": name, "base": spec["base"], "description": spec["description"],
             "sets": list(sets), "state": "running", "pid": os.getpid(),
             "cells_done": 0, "trained": 0,
             "cells": [{"label": cell_label(list(own)), "overrides": c, "run_id": None,
                        "reused": False} for own, c in zip(spec["cells"], cells, strict=True)],
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
            run = create_run(cfg, base, preset=spec["base"])
            write_json_atomic(folder / "sweep.json", state | {"current_run": run.run_id})
            if execute(run) is None:
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
        rows.append(table_row(cell["label"], cell["overrides"], run, summary))
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
