"""Sweeps: many experiments that differ in a few keys, collected into one table.

A sweep is a base preset plus a list of cells, each a list of ``--set`` overrides. Every cell
is an ordinary run in the runs root. A cell whose exact config already ran to completion is
reused instead of retrained (configs are compared by hash), so an interrupted sweep resumes
where it stopped and overlapping sweeps share runs. The sweep folder
``<runs root>/sweeps/<name>-<hash>/`` holds ``sweep.json`` (spec, cells, their run ids) and
``table.csv`` / ``table.json``, rewritten after every cell.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.analyses.results import (
    InversionSummary,
    MiaSummary,
    RunSummary,
    read_summary,
)
from engine.analyses.sweep_table import SweepRow
from engine.core.config import ConfigError, ExperimentConfig
from engine.core.run_folder import RunFolder, number_or_none, text_or_none, write_json_atomic
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run, find_finished_run, runs_root
from engine.orchestration.sweep_catalogue import Cell, sweep_cells, sweep_spec

CANCEL_FILE = "cancel"
INVERSION_COLUMNS = ("ssim_body", "floor_ssim_body", "ssim", "psnr_db", "ssim_ct",
                     "psnr_db_ct", "ssim_coarse")


@dataclass(frozen=True)
class SweepProgress:
    """A sweep folder's ``sweep.json`` as its readers need it: the sweep's ``state``
    (queued, running, done, failed, cancelled), how many cells finished, each cell's label
    and run id (None before the cell ran) and the run being trained now."""

    state: str
    cells_done: int
    labels: tuple[str | None, ...] = ()
    run_ids: tuple[str | None, ...] = ()
    current_run: str | None = None


def _run_id(value: Any) -> str | None:
    """A run id as a sweep records it; anything else (a path, another type) is None, so a
    damaged file cannot point a reader outside the runs root."""
    text = text_or_none(value)
    return text if text and "/" not in text and not text.startswith(".") else None


def read_sweep_progress(folder: Path) -> SweepProgress | None:
    """``folder``'s ``sweep.json``, typed; None when the sweep never started. ``ValueError``
    naming the file when it is damaged (unreadable, or without a count of finished cells)."""
    path = folder / "sweep.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raw = None
    done = number_or_none(raw.get("cells_done"), int) if isinstance(raw, dict) else None
    if done is None or done < 0:
        raise ValueError(f"{path} is damaged")
    cells = raw.get("cells") if isinstance(raw.get("cells"), list) else []
    cells = [c if isinstance(c, dict) else {} for c in cells]
    return SweepProgress(state=text_or_none(raw.get("state")) or "running", cells_done=done,
                         labels=tuple(text_or_none(c.get("label")) for c in cells),
                         run_ids=tuple(_run_id(c.get("run_id")) for c in cells),
                         current_run=_run_id(raw.get("current_run")))


def _mia_columns(mia: MiaSummary) -> dict[str, Any]:
    """A row's membership-inference columns: every attack's pooled and per-center AUC, then
    the patient-level AUC and the verdict of the attack the verdict rests on."""
    row: dict[str, Any] = {}
    for attack, v in mia.variants.items():
        row[f"auc_pooled[{attack}]"] = v.pooled_auc
        for center, auc in v.auc.items():
            row[f"auc[{attack}][{center}]"] = auc
    variant = mia.variants.get(mia.verdict_attack or mia.attack)
    pooled = variant.patient.pooled if variant else None
    glob = mia.variants.get("global_loss")
    glob_pooled = glob.patient.pooled if glob else None
    row |= {"mia_attack": mia.attack, "patient_auc_pooled": pooled.auc if pooled else None,
            "patient_auc_ci_pooled": pooled.auc_ci if pooled else None,
            "mia_verdict": (mia.verdict or {}).get("overall"),
            "mia_verdict_attack": mia.verdict_attack,
            "global_patient_auc_pooled": glob_pooled.auc if glob_pooled else None,
            "global_patient_auc_ci_pooled": glob_pooled.auc_ci if glob_pooled else None}
    return row


def _inversion_columns(inv: InversionSummary, cfg: ExperimentConfig) -> dict[str, Any]:
    """A row's gradient-inversion columns: the attack's figures and settings, its
    calibration, then the body SSIM per center."""
    clients = list(inv.per_client.values())
    losses = [c.final_loss for c in clients if c.final_loss is not None]
    cal = inv.calibration
    row: dict[str, Any] = {
        "inversion_round": clients[0].round,
        **{f"inversion_{k}": getattr(inv, k) for k in INVERSION_COLUMNS},
        "inversion_verdict": inv.verdict,
        "inversion_final_loss": float(np.mean(losses)) if losses else None,
        "inversion_tv_weight": cfg.attacks.inversion.tv_weight,
        "inversion_adam": cfg.attacks.inversion.adam,
        "inversion_iterations": inv.iterations,
        "inversion_restarts": inv.restarts,
        "calibration_ssim_body": cal.ssim_body if cal else None,
        "calibration_floor_ssim_body": cal.floor_ssim_body if cal else None,
        "calibration_rate": cal.rate if cal else None,
        "inversion_null_ssim_body": inv.null_ssim_body}
    for center, v in inv.per_client.items():
        row[f"inversion_ssim_body[{center}]"] = v.ssim_body
    return row


def table_row(label: str, sets: list[str], run: RunFolder, s: RunSummary,
              preset: str | None = None) -> SweepRow:
    """One table row (:class:`engine.analyses.sweep_table.SweepRow`): the cell's settings, read
    from the run's config, and the ε it reached; its final sCT metrics; every attack's
    figures. ``s`` is the run's summary."""
    cfg = run.config()
    fed, dp = s.federation, s.federation.dp
    fin = fed.final
    row: dict[str, Any] = {
        "cell": label, "overrides": " ".join(sets), "run_id": run.run_id, "preset": preset,
        "dp_enabled": cfg.defenses.dp.enabled, "dp_level": cfg.defenses.dp.level,
        # An older run's summary may not say; its config does.
        "noise_multiplier": (dp.noise_multiplier if "noise_multiplier" in dp.model_fields_set
                             else cfg.defenses.dp.noise_multiplier),
        "epsilon": dp.epsilon if cfg.defenses.dp.enabled else None,
        "clip_norm": cfg.defenses.dp.clip_norm,
        "secure_aggregation": cfg.defenses.secure_aggregation,
        "aggregator": cfg.federation.aggregator,
        "pre_aggregator": cfg.federation.pre_aggregator,
        "prune_fraction": cfg.defenses.prune_fraction,
        "loss": cfg.federation.loss, "norm": cfg.model.norm,
        "optimizer": cfg.federation.optimizer,
        "batch_size": cfg.federation.batch_size,
        "local_epochs": cfg.federation.local_epochs,
        "image_size": cfg.data.image_size,
        "mae_hu": fin.mae_hu if fin else None, "psnr_db": fin.psnr_db if fin else None,
        "ssim": fin.ssim if fin else None}
    if mia := s.mia:
        row |= _mia_columns(mia)
    if poison := s.poisoning:
        row |= {"poison_kind": poison.kind, "malicious": " ".join(poison.malicious_names),
                "noise_std": poison.noise_std, "poison_target": poison.target,
                "baseline_mae_hu": poison.baseline[cfg.federation.aggregator].mae_hu,
                "mae_ratio": poison.cells[0].mae_ratio,
                "detected": " ".join(poison.detection.detected)}
    if inv := s.inversion:
        row |= _inversion_columns(inv, cfg)
    if bd := s.backdoor:
        row |= {"update_clip": cfg.defenses.update_clip, "flame": cfg.defenses.flame,
                "fltrust": cfg.defenses.fltrust, "backdoor_attack": bd.attack,
                "backdoor_trigger": bd.trigger.get("kind"),
                "malicious": " ".join(bd.malicious_names),
                "backdoor_success_hu": bd.success_hu,
                "backdoor_success_rate": bd.success_rate, "backdoor_patients": bd.patients,
                "backdoor_patients_backdoored": bd.patients_backdoored,
                "backdoor_null_success_hu": bd.null.success_hu,
                "backdoor_control_success_hu": bd.control.success_hu if bd.control else None,
                "backdoor_clean_mae_ratio": bd.clean_mae_ratio,
                "backdoor_defense_mae_ratio": bd.defense_mae_ratio,
                "backdoor_verdict": bd.verdict}
    if audit := s.dp_audit:
        row |= {"audit_kind": audit.kind, "audit_bound": audit.epsilon_lower_bound,
                "audit_cap": audit.cap, "audit_canaries": audit.canaries,
                "audit_confidence": audit.confidence, "audit_verdict": audit.verdict}
    return SweepRow.model_validate(row)


def sweep_folder(name: str, sets: list[str] | tuple = (), root: str | Path | None = None) -> Path:
    """``<runs root>/sweeps/<name>-<hash of the base and cells>/`` (not created)."""
    spec = sweep_spec(name)
    cells = [list(c) + list(sets) for c in spec["cells"]]
    digest = hashlib.sha256(json.dumps([spec["base"], cells]).encode()).hexdigest()[:8]
    return runs_root(root) / "sweeps" / f"{name}-{digest}"


def run_sweep(name: str, *, root: str | Path | None = None, sets: list[str] | tuple = (),
              progress: Callable[[str], None] = print, workers: int = 1) -> Path:
    """Run (or resume) sweep ``name``; returns the sweep folder.

    A ``cancel`` file in the folder (see :func:`engine.orchestration.jobs.cancel_sweep`)
    stops the sweep before its next cell and is consumed; finished cells stay and a rerun
    resumes from there. ``workers``: see :func:`run_cells`.
    """
    spec = sweep_spec(name)
    cells = sweep_cells(name, sets)
    configs = [build_config(c.preset, sets=c.sets) for c in cells]  # validate all first
    for key in spec.get("requires", []):
        section, field = key.split(".")
        if getattr(getattr(configs[0], section), field) is None:
            raise ConfigError(f"sweep {name!r} needs {key}: add --set {key}=...")
    return run_cells(sweep_folder(name, sets, root), cells, configs, root=root,
                     header={"name": name, "base": spec["base"],
                             "description": spec["description"], "sets": list(sets)},
                     progress=progress, workers=workers)


def _sigterm_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _exit_on_sigterm(active: bool) -> Iterator[None]:
    """While ``active``, SIGTERM ends this process through Python (``SystemExit``), so that
    the sweep stops its workers' cells and its pool before it ends: by default SIGTERM ends
    the process at once, and its worker processes would go on training alone. Only the main
    thread can set a signal handler; elsewhere nothing changes."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _sigterm_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_thread() -> None:
    """A worker process's start: one torch thread, so that workers share the cores instead of
    oversubscribing them."""
    torch.set_num_threads(1)


def _execute_folder(path: str) -> str:
    """Execute the run in ``path``; returns its final state."""
    run = RunFolder(Path(path))
    execute(run)
    return run.status().state


class _InProcess:
    """The executor of ``workers = 1``: each cell runs here, at once, on this process's
    threads."""

    def submit(self, fn: Callable[[str], str], path: str) -> Future[str]:
        done: Future[str] = Future()
        done.set_result(fn(path))
        return done


def _waves(configs: list[ExperimentConfig], workers: int) -> list[list[int]]:
    """Cell indices in the order they start. Alone, in the sweep's order; with parallel
    workers, clean cells first: a poisoned cell reuses its clean baseline's finished run,
    which must not still be training."""
    order = list(range(len(configs)))
    if workers == 1:
        return [order]
    clean = [i for i in order if not configs[i].attacks.poisoning.enabled]
    return [w for w in (clean, [i for i in order if i not in set(clean)]) if w]


def run_cells(folder: Path, cells: list[Cell], configs: list[ExperimentConfig], *,
              root: str | Path | None, header: dict[str, Any],
              progress: Callable[[str], None] = print, workers: int = 1) -> Path:
    """Run the cells (already validated as ``configs``) into ``folder``: ``sweep.json``
    (``header`` plus progress), ``table.json``/``table.csv`` (one row per cell, in the cells'
    order, see :func:`table_row`) and ``curves.json``. A cell whose exact config already
    finished is reused; a ``cancel`` file stops before the next cell.

    ``workers`` > 1 trains that many cells at once, each in a worker process on one torch
    thread (clean cells first, see :func:`_waves`); with 1 each cell runs in this process on
    its thread count. Either way every cell of the sweep runs on the same thread count, which
    is part of its figures (:mod:`engine.orchestration.threads`): a finished run is reused
    only when it ran on that count.
    """
    if workers < 1:
        raise ConfigError(f"workers = {workers}: use 1 or more")
    base = runs_root(root)
    folder.mkdir(parents=True, exist_ok=True)
    state = {**header, "state": "running", "pid": os.getpid(), "cells_done": 0, "trained": 0,
             "cells": [{"label": c.label, "preset": c.preset, "overrides": c.sets,
                        "run_id": None, "reused": False} for c in cells],
             "started": time.time()}
    write_json_atomic(folder / "sweep.json", state)
    rows: list[SweepRow | None] = [None] * len(cells)
    curves: dict[str, Any] = {}

    def record(i: int, run: RunFolder, reused: bool) -> None:
        cell = state["cells"][i]
        cell |= {"run_id": run.run_id, "reused": reused}
        summary = read_summary(run.path / "summary.json") or RunSummary()
        rows[i] = table_row(cell["label"], cell["overrides"], run, summary, cell["preset"])
        curves[run.run_id] = [p.model_dump() for p in summary.federation.history]
        state.update(cells_done=state["cells_done"] + 1, trained=state["trained"] + (not reused),
                     updated=time.time())
        write_json_atomic(folder / "sweep.json", state)
        write_table(folder, [r for r in rows if r is not None])
        write_json_atomic(folder / "curves.json", curves)

    pool = (ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                initializer=_one_thread) if workers > 1 else None)
    running: dict[Future[str], tuple[int, RunFolder]] = {}
    try:
        with _exit_on_sigterm(pool is not None):
            ended = _run_waves(folder, cells, configs, _waves(configs, workers), base, state,
                               record, progress, pool or _InProcess(), workers,
                               1 if workers > 1 else torch.get_num_threads(), running)
    except BaseException:  # a stop signal or an error: no worker may go on training alone
        _cancel(running)
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    (folder / CANCEL_FILE).unlink(missing_ok=True)  # consumed, or a stop that came too late
    write_json_atomic(folder / "sweep.json", state | {"state": ended})
    return folder


def _run_waves(folder: Path, cells: list[Cell], configs: list[ExperimentConfig],
               waves: list[list[int]], base: Path, state: dict[str, Any],
               record: Callable[[int, RunFolder, bool], None],
               progress: Callable[[str], None], pool: ProcessPoolExecutor | _InProcess,
               workers: int, threads: int,
               running: dict[Future[str], tuple[int, RunFolder]]) -> str:
    """Start the cells wave by wave, at most ``workers`` at a time, each on ``threads`` torch
    threads, keeping the cells in progress in ``running`` (the caller's, so that it can stop
    them); returns the sweep's end state (``done`` or ``cancelled``), or raises
    ``RuntimeError`` naming a failed cell."""
    n = len(cells)
    for wave in waves:
        todo = list(wave)
        while todo or running:
            if (folder / CANCEL_FILE).exists():
                _cancel(running)
                progress(f"cancelled after {state['cells_done']} of {n} cells")
                return "cancelled"
            while todo and len(running) < workers:
                i = todo.pop(0)
                run = find_finished_run(configs[i], base, threads)
                if run is not None:
                    progress(f"[{i + 1}/{n}] {state['cells'][i]['label']}: reusing {run.run_id}")
                    record(i, run, True)
                    continue
                progress(f"[{i + 1}/{n}] {state['cells'][i]['label']}: training")
                run = create_run(configs[i], base, preset=cells[i].preset)
                write_json_atomic(folder / "sweep.json", state | {"current_run": run.run_id})
                running[pool.submit(_execute_folder, str(run.path))] = (i, run)
            finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            # Off the running list first: a failure below must not send a stop to a cell
            # that has already finished.
            ended_cells = [(future, *running.pop(future)) for future in finished]
            for future, i, run in ended_cells:
                try:
                    ended, error = future.result(), run.status().error
                except Exception as err:  # the worker process died (killed, out of memory)
                    ended, error = "failed", f"its worker process ended ({err})"
                if ended == "cancelled":
                    _cancel(running)
                    return "cancelled"
                if ended != "done":
                    _cancel(running)
                    write_json_atomic(folder / "sweep.json", state | {"state": "failed"})
                    raise RuntimeError(f"sweep cell {state['cells'][i]['label']!r} failed: "
                                       f"{error} (see {run.path}/log.txt)")
                record(i, run, False)
    return "done"


def _cancel(running: dict[Future[str], tuple[int, RunFolder]]) -> None:
    """Ask every cell still running to stop and wait until each has."""
    for future, (_, run) in running.items():
        if not future.done():
            run.request_cancel()
    wait(running)


def write_table(folder: Path, table: list[SweepRow]) -> None:
    rows = [r.table() for r in table]
    write_json_atomic(folder / "table.json", rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = folder / ".table.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(folder / "table.csv")
