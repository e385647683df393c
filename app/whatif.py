"""Helpers for the What-if page: the patients one can ask about, the what-if study of one
patient (``whatif`` sweep: without and with defenses) and its display.

The answers are the engine's (``summary.json`` → ``whatif``, see engine/attacks/whatif.py);
this module only finds them and draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app.data import uploads_folder
from app.inversion import leak_level, load_npz
from app.results import Sweep, read_json, read_sweep
from app.ui import PHASE_TEXT, upscale
from engine.analyses.whatif import EXPOSED_RANK
from engine.core.render import CT_WINDOW_HU, to_gray
from engine.core.run_folder import RunFolder
from engine.core.units import unit_to_hu
from engine.data.nifti import save_patient_folder
from engine.data.phantom import example_patient_volume

SWEEP = "whatif"
EXAMPLES = "whatif-examples"
CELL_TITLES = ("Without defenses", "With secure aggregation + privacy noise")


def patient_folders(runs_folder: Path) -> dict[str, Path]:
    """Label → folder of every patient one can ask about: uploads, then example patients."""
    found: dict[str, Path] = {}
    for parent, kind in ((uploads_folder(runs_folder), "uploaded"),
                         (runs_folder / EXAMPLES, "example")):
        if parent.is_dir():
            for p in sorted(parent.iterdir()):
                if p.is_dir() and not p.name.startswith(".") and (p / "mr.nii.gz").is_file():
                    found[f"{p.name} ({kind})"] = p
    return found


def add_example_patient(runs_folder: Path, center: int) -> Path:
    """Save a new artificial patient scanned at ``center`` (never part of any cohort) under
    ``<runs root>/whatif-examples/``, as NIfTI like an upload; returns its folder."""
    parent = runs_folder / EXAMPLES
    number = next(n for n in range(1, 10_000) if not (parent / f"example-{n:03d}").exists())
    # Patient numbers from 500 up are never drawn by a cohort (at most 64 + 64 per center).
    volume = example_patient_volume(0, center, 500 + number)
    return save_patient_folder(volume, parent / f"example-{number:03d}")


def whatif_sets(patient: Path, center: int) -> tuple[str, ...]:
    """The ``whatif`` sweep's overrides for ``patient`` trained on by ``center``."""
    return (f"data.whatif_patient={patient}", f"data.whatif_center={center}",
            f"attacks.inversion.target_center={center}")


def read_whatif(patient: Path, center: int) -> Sweep:
    return read_sweep(SWEEP, whatif_sets(patient, center))


@dataclass
class WhatifCell:
    """One side of the comparison: its run and the summary's ``whatif`` block."""

    title: str
    run: RunFolder
    summary: dict[str, Any]

    @property
    def whatif(self) -> dict[str, Any]:
        return self.summary.get("whatif") or {}


def finished_cells(sweep: Sweep) -> list[WhatifCell | None]:
    """Both sides of a what-if study, None where that experiment has not finished."""
    spec = read_json(sweep.folder / "sweep.json")
    cells = spec.get("cells") if isinstance(spec, dict) else None
    out: list[WhatifCell | None] = []
    for k, title in enumerate(CELL_TITLES):
        cell = cells[k] if isinstance(cells, list) and k < len(cells) else None
        run_id = cell.get("run_id") if isinstance(cell, dict) else None
        summary = (read_json(sweep.folder.parent.parent / run_id / "summary.json")
                   if run_id else None)
        ok = isinstance(summary, dict) and isinstance(summary.get("whatif"), dict)
        out.append(WhatifCell(title, RunFolder(sweep.folder.parent.parent / str(run_id)),
                              summary) if ok else None)
    return out


def membership_verdict(m: dict[str, Any]) -> tuple[str, str, str]:
    """(colour, title, detail) of the patient's membership result."""
    share, n = f"{m['rank']:.0%}", m["nonmembers"]
    if m["exposed"]:
        return "red", "Exposed", (f"The curious server scores this patient as more likely "
                                  f"trained on than {share} of {n} patients nobody trained on: "
                                  f"it can tell that this patient's data were used.")
    if m["rank"] >= 0.6:
        return "orange", "Partly exposed", (
            f"The score ranks above {share} of {n} never-trained patients: a hint, not proof "
            f"(exposed from {EXPOSED_RANK:.0%}).")
    return "green", "Not exposed", (f"The score ranks above only {share} of {n} never-trained "
                                    f"patients: the server cannot tell this patient was used.")


def reconstruction_verdict(r: dict[str, Any] | None) -> tuple[str, str, str]:
    """(colour, title, detail) of the reconstruction attempt on the patient's slices."""
    if r is None:
        return "gray", "Not attempted", "No reconstruction was attempted in this run."
    if not r.get("n"):
        return "gray", "Not attempted", ("None of the attacker's reconstructions matched this "
                                         "patient's slices (the hospital's update held more "
                                         "slices than were rebuilt).")
    detail = (f"Similarity inside the head {r['ssim_body']:.2f} vs {r['floor_ssim_body']:.2f} "
              f"for the attacker's average brain (1 = identical).")
    level = leak_level(r["ssim_body"], r["floor_ssim_body"])  # the Gradient inversion page's
    if level == 0 and r.get("verdict") != "no_leak":
        return "gray", "Inconclusive", (
            "The rebuilt slices are no closer to the patient's than the attacker's average "
            "brain, but this short attempt could not rebuild a slice of a design known to "
            "leak either, so it does not show that the patient's images are safe. " + detail)
    if level == 2:
        return "red", "Recognisable", ("The rebuilt slices clearly resemble the patient's. "
                                       + detail)
    if level == 1:
        return "orange", "Partly rebuilt", ("The rebuilt slices are somewhat closer to the "
                                            "patient's than the attacker's average brain. "
                                            + detail)
    return "green", "Not recognisable", ("The rebuilt slices are no closer to the patient's "
                                         "than the attacker's average brain. " + detail)


def score_figure(m: dict[str, Any]) -> go.Figure:
    """Membership scores: never-trained patients, other trained patients, this patient."""
    fig = go.Figure()
    for values, name, colour, y in ((m["nonmember_scores"], "never trained on", "#7f8c8d", 0),
                                    (m["member_scores"], "other trained patients", "#2e86c1", 1)):
        fig.add_trace(go.Scatter(x=values, y=[y] * len(values), mode="markers", name=name,
                                 marker={"size": 11, "color": colour, "opacity": 0.75},
                                 hovertemplate="score %{x:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[m["score"]], y=[2], mode="markers", name="this patient",
                             marker={"size": 18, "color": "#c0392b", "symbol": "star"},
                             hovertemplate="this patient: %{x:.3f}<extra></extra>"))
    fig.update_yaxes(tickvals=[0, 1, 2], range=[-0.6, 2.6],
                     ticktext=["never trained on", "other trained", "this patient"])
    fig.update_xaxes(title_text="membership score (higher = looks trained on)")
    fig.update_layout(height=230, showlegend=False, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def patient_pairs(run: RunFolder, whatif: dict[str, Any],
                  limit: int = 3) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Up to ``limit`` of the patient's slices: (original MRI, rebuilt MRI, original CT,
    rebuilt CT) as display images (CT in the brain window, HU)."""
    r = whatif.get("reconstruction") or {}
    arrays = load_npz(run.path / "inversion" / f"{whatif.get('center')}.npz")
    if not r.get("pairs") or arrays is None:
        return []
    lo, hi = CT_WINDOW_HU
    out = []
    for i, j in r["pairs"][:limit]:
        out.append((upscale(to_gray(arrays["true_mri"][j, 0], 0, 1), 128),
                    upscale(to_gray(arrays["mri"][i, 0], 0, 1), 128),
                    upscale(to_gray(unit_to_hu(arrays["true_ct_unit"][j, 0]), lo, hi), 128),
                    upscale(to_gray(unit_to_hu(arrays["ct_unit"][i, 0]), lo, hi), 128)))
    return out


@st.fragment(run_every=2.0)
def whatif_progress(patient: Path, center: int) -> None:
    """Progress of a running what-if study; reruns the whole page once it ends."""
    sweep = read_whatif(patient, center)
    if not sweep.active:
        st.rerun(scope="app")
    spec = read_json(sweep.folder / "sweep.json")
    current = spec.get("current_run") if isinstance(spec, dict) else None
    phase = ""
    if current and sweep.state == "running":
        status = read_json(sweep.folder.parent.parent / current / "status.json")
        if isinstance(status, dict):
            phase = " " + PHASE_TEXT.get(str(status.get("phase")), "")
    part = CELL_TITLES[min(sweep.cells_done, len(CELL_TITLES) - 1)].lower()
    text = ("Starting…" if sweep.state == "queued" else
            f"Experiment {sweep.cells_done + 1} of {sweep.total} ({part}).{phase}")
    st.progress(min(sweep.cells_done / max(sweep.total, 1), 1.0), text=text)
