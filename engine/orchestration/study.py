"""``fedsct study``: the study's analyses in one resumable job, at a chosen scale.

The FedSynthCT-Brain security analysis measured sCT quality, membership inference with and
without secure aggregation, DLG gradient inversion and high/low-noise poisoning per
aggregation rule and malicious-center configuration. A study runs all of them (plus the
strongest inversion attack and a membership attack with enough patients for a verdict) as
the cells of one sweep, so finished runs are reused, a stopped study continues where it
stopped, and progress is in ``sweep.json``; then it writes the study report beside the
study's published figures (:mod:`engine.analyses.study_report`).

Scales:

* ``demo``: every analysis shrunk to finish in minutes on 2 CPU cores (fewer rounds, a
  smaller attack budget), for a first look;
* ``paper``: the presets as they are (the study's recipe scaled to a CPU);
* ``full``: the study's image size (256 px) and larger cohorts, meant for a GPU.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from engine.analyses.study_report import write_study_report
from engine.core.run_folder import RunFolder
from engine.orchestration.presets import build_config
from engine.orchestration.store import runs_root
from engine.orchestration.study_catalogue import study_cells
from engine.orchestration.sweeps import read_sweep_progress, run_cells


def study_folder(scale: str, root: str | Path | None = None) -> Path:
    """``<runs root>/studies/<scale>-<hash of the cells>/`` (not created)."""
    cells = [[c.preset, c.sets] for _, c in study_cells(scale)]
    digest = hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:8]
    return runs_root(root) / "studies" / f"{scale}-{digest}"


def check_study(scale: str) -> None:
    """Validate every cell of the study (``ConfigError`` naming the first bad one)."""
    for _, cell in study_cells(scale):
        build_config(cell.preset, sets=cell.sets)


def run_study(scale: str, *, root: str | Path | None = None,
              progress: Callable[[str], None] = print, workers: int = 1) -> Path:
    """Run (or continue) the study at ``scale`` and write its report (``report.md``,
    ``report.html``) into its folder; returns the folder. ``workers``: experiments trained
    at once (see :func:`~engine.orchestration.sweeps.run_cells`)."""
    parts, cells = zip(*study_cells(scale), strict=True)
    configs = [build_config(c.preset, sets=c.sets) for c in cells]
    folder = run_cells(study_folder(scale, root), list(cells), configs, root=root,
                       header={"name": f"study-{scale}", "base": "study", "scale": scale,
                               "description": f"The study's analyses at the {scale} scale"},
                       progress=progress, workers=workers)
    state = read_sweep_progress(folder)
    # A run id the file lost (damaged) leaves the report unwritten rather than built from
    # an empty summary.
    if state is not None and state.state == "done" and None not in state.run_ids:
        base = runs_root(root)
        summaries = []
        for part, cell, run_id in zip(parts, cells, state.run_ids, strict=True):
            run = RunFolder(base / str(run_id))
            summaries.append((part, cell.own, run.run_id, run.summary() or {}))
        write_study_report(folder, scale, summaries)
        progress(f"study report: {folder / 'report.html'}")
    return folder
