"""Helpers for the What-if page: the patients one can ask about, the what-if study of one
patient (``whatif`` sweep: without and with defenses) and its display.

The answers are the engine's (``summary.json`` → ``whatif``, see engine/attacks/whatif.py);
this module only finds them and draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from app.views.common import PHASE_TEXT, Verdict, upscale
from app.views.inversion import NULL_WORDS, client_leak, leak_level, load_npz
from app.views.results import Sweep, read_sweep
from engine.analyses.results import (
    RunSummary,
    SummaryError,
    WhatifMembership,
    WhatifReconstruction,
    WhatifSummary,
    read_summary,
)
from engine.analyses.whatif import EXPOSED_RANK, chance_rate
from engine.core.render import CT_WINDOW_HU, to_gray
from engine.core.run_folder import RunFolder
from engine.core.units import unit_to_hu
from engine.data.uploads import EXAMPLES, uploads_folder

SWEEP = "whatif"
CELL_TITLES = ("Without defenses", "With secure aggregation + clipped noise")


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


def whatif_sets(patient: Path, center: int) -> tuple[str, ...]:
    """The ``whatif`` sweep's overrides for ``patient`` trained on by ``center``."""
    return (f"data.whatif_patient={patient}", f"data.whatif_center={center}",
            f"attacks.inversion.target_center={center}")


def read_whatif(patient: Path, center: int) -> Sweep:
    return read_sweep(SWEEP, whatif_sets(patient, center))


@dataclass
class WhatifCell:
    """One side of the comparison: its run and typed summary."""

    title: str
    run: RunFolder
    summary: RunSummary

    @property
    def whatif(self) -> WhatifSummary:
        return self.summary.whatif or WhatifSummary()


def finished_cells(sweep: Sweep) -> list[WhatifCell | None]:
    """Both sides of a what-if study, None where that experiment has not finished."""
    run_ids = sweep.progress.run_ids if sweep.progress else ()
    out: list[WhatifCell | None] = []
    for k, title in enumerate(CELL_TITLES):
        run_id = run_ids[k] if k < len(run_ids) else None
        run = RunFolder(sweep.folder.parent.parent / str(run_id))
        try:
            summary = read_summary(run.path / "summary.json") if run_id else None
        except SummaryError:
            summary = None
        ok = summary is not None and summary.whatif is not None
        out.append(WhatifCell(title, run, summary) if ok else None)
    return out


ATTACK_WORDS = {"global_loss": "the attack on the released global model (under secure "
                               "aggregation the server never sees this hospital's own upload)"}


def membership_verdict(m: WhatifMembership,
                       control: WhatifMembership | None = None) -> Verdict:
    """The patient's membership result: their score ranked against never-trained patients,
    with how often a never-trained patient ranks as high by chance. "Not exposed" only
    beside an undefended ``control`` run that did expose the patient; otherwise a low rank
    is no evidence either way."""
    share, n = f"{m.rank:.0%}", m.nonmembers
    chance = m.chance_rate if m.chance_rate is not None else chance_rate(max(n, 1))
    figure = f"ranks above {share} of {n} never-trained patients"
    attack = ATTACK_WORDS.get(m.attack, f"the membership attack ({m.attack})")
    basis = (f"Scored by {attack}. A patient nobody trained on ranks this high "
             f"(from {EXPOSED_RANK:.0%}) by chance {chance:.0%} of the time; with {n} "
             f"patients the rank moves in steps of {1 / max(n, 1):.0%}.")
    if m.exposed:
        return Verdict("red", "Exposed", f"The curious server scores this patient as more "
                       f"likely trained on than {share} of {n} patients nobody trained on. "
                       + basis, figure)
    if m.rank >= 0.6:
        return Verdict("orange", "Partly exposed", f"The score ranks above {share} of {n} "
                       "never-trained patients: a hint, not proof. " + basis, figure)
    if control is not None and control.exposed:
        return Verdict("green", "Not exposed", f"The score ranks above only {share} of {n} "
                       "never-trained patients, while the same attack without defenses "
                       f"exposed this patient (rank {control.rank:.0%}). " + basis, figure)
    return Verdict("gray", "No evidence either way", f"The score ranks above only {share} of "
                   f"{n} never-trained patients. Without a run that exposed this patient, a "
                   "low rank does not show the patient is safe: the attack may be too weak "
                   "for this patient. " + basis, figure)


def reconstruction_verdict(r: WhatifReconstruction | None) -> Verdict:
    """The reconstruction attempt on the patient's slices, with the run's calibration."""
    if r is None:
        return Verdict("gray", "Not attempted", "No reconstruction was attempted in this run.")
    if not r.n or r.ssim_body is None or r.floor_ssim_body is None:
        return Verdict("gray", "No slice matched", "None of the attacker's reconstructions "
                       "matched this patient's slices: the attack rebuilt fewer slices than "
                       "the hospital trained on (it rebuilds as many as the upload reports; "
                       "under differential privacy a hospital reports its declared size, not "
                       "its real one). Nothing can be said about this patient from this "
                       "attempt.")
    ssim_body, base, leak = client_leak(r)
    null = r.null_ssim_body is not None
    basis = NULL_WORDS if null else "the attacker's average brain"
    detail = (f"Similarity inside the head {ssim_body:.2f} vs {base:.2f} for {basis} "
              "(1 = identical), from "
              f"{r.n} of the patient's slices.")
    figure = f"body SSIM {ssim_body:.2f} vs {'null' if null else 'floor'} {base:.2f}"
    level = leak_level(ssim_body, leak)  # the Gradient inversion page's
    if level == 0 and r.verdict != "no_leak":
        return Verdict("gray", "Inconclusive", "The rebuilt slices are no closer to the "
                       "patient's than unrelated patients' slices, but this attempt could not "
                       "reliably rebuild control uploads of the same difficulty either, so it "
                       "does not show that the patient's images are safe. " + detail, figure)
    if level == 2:
        return Verdict("red", "Recognisable", "The rebuilt slices clearly resemble the "
                       "patient's. " + detail, figure)
    if level == 1:
        return Verdict("orange", "Partly rebuilt", "The rebuilt slices are closer to the "
                       "patient's than unrelated patients' slices are. " + detail, figure)
    return Verdict("green", "Not recognisable", "The rebuilt slices are no closer to the "
                   "patient's than unrelated patients' slices, although the same attack "
                   "rebuilt every control upload of the same difficulty. " + detail, figure)


def score_figure(m: WhatifMembership) -> go.Figure:
    """Membership scores: never-trained patients, other trained patients, this patient."""
    fig = go.Figure()
    for values, name, colour, y in ((m.nonmember_scores, "never trained on", "#7f8c8d", 0),
                                    (m.member_scores, "other trained patients", "#2e86c1", 1)):
        fig.add_trace(go.Scatter(x=values, y=[y] * len(values), mode="markers", name=name,
                                 marker={"size": 11, "color": colour, "opacity": 0.75},
                                 hovertemplate="score %{x:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[m.score], y=[2], mode="markers", name="this patient",
                             marker={"size": 18, "color": "#c0392b", "symbol": "star"},
                             hovertemplate="this patient: %{x:.3f}<extra></extra>"))
    fig.update_yaxes(tickvals=[0, 1, 2], range=[-0.6, 2.6],
                     ticktext=["never trained on", "other trained", "this patient"])
    fig.update_xaxes(title_text="membership score (higher = looks trained on)")
    fig.update_layout(height=230, showlegend=False, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def patient_pairs(run: RunFolder, whatif: WhatifSummary,
                  limit: int = 3) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Up to ``limit`` of the patient's slices: (original MRI, rebuilt MRI, original CT,
    rebuilt CT) as display images (CT in the brain window, HU)."""
    r = whatif.reconstruction
    arrays = load_npz(run.path / "inversion" / f"{whatif.center}.npz")
    if r is None or not r.pairs or arrays is None:
        return []
    lo, hi = CT_WINDOW_HU
    out = []
    for i, j in r.pairs[:limit]:
        out.append((upscale(to_gray(arrays["true_mri"][j, 0], 0, 1), 128),
                    upscale(to_gray(arrays["mri"][i, 0], 0, 1), 128),
                    upscale(to_gray(unit_to_hu(arrays["true_ct_unit"][j, 0]), lo, hi), 128),
                    upscale(to_gray(unit_to_hu(arrays["ct_unit"][i, 0]), lo, hi), 128)))
    return out


def whatif_progress_text(sweep: Sweep) -> str:
    """The progress line of a running what-if study."""
    current = sweep.progress.current_run if sweep.progress else None
    phase = ""
    if current and sweep.state == "running":
        status = RunFolder(sweep.folder.parent.parent / current).recorded_status()
        phase = " " + PHASE_TEXT.get(status.phase or "", "")
    part = CELL_TITLES[min(sweep.cells_done, len(CELL_TITLES) - 1)].lower()
    return ("Waiting for its turn in the job queue…" if sweep.state == "queued" else
            f"Experiment {sweep.cells_done + 1} of {sweep.total} ({part}).{phase}")


# --------------------------------------------------------------------------- page words

INTRO = ("Pick one patient and the hospital that would train on them. The lab runs the "
         "live-demo federation (4 hospitals) twice with this patient among that hospital's "
         "training patients: once **without defenses** and once **with secure aggregation and "
         "privacy noise**. In both, the curious server then tries to tell whether this patient "
         "was used (*membership inference*) and to rebuild their images from the hospital's "
         "update (*gradient inversion*). The two answers are shown side by side.")
NO_PATIENT = ("No patient to ask about yet: upload an MRI + CT pair on **Data & centers**, or "
              "add an example patient.")
EXAMPLE_HELP = ("An artificial patient scanned at the chosen hospital, saved like an upload "
                "(nobody has trained on it yet).")
START_HELP = ("Two experiments, one after the other; one that already ran with the same "
              "settings is reused.")
MEMBERSHIP_LEAD = "**Was this patient used?** (membership inference) "
RECONSTRUCTION_LEAD = "**Can their images be rebuilt?** (gradient inversion) "
SHORT_ATTEMPT = ("A short attempt (50 iterations of Inverting Gradients on the hospital's first "
                 "recorded update); the Gradient inversion page has stronger ones.")
PAIR_CAPTIONS = ("Patient's MRI", "Rebuilt MRI", "Patient's CT", "Rebuilt CT")
