"""Display helpers for the Gradient inversion page: run listing, verdict, images, sweep charts.

Only formats what the engine wrote (``summary.json``'s ``inversion`` block, the per-hospital
``inversion/<center>.npz`` and the ``inversion-factors`` / ``inversion-defenses`` sweep
tables); the only numbers derived here are differences and the |error| maps for display.
"""

from __future__ import annotations

import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.results import ResultRun, finished_runs_with, read_json
from app.ui import upscale
from engine.attacks.inversion import LEAK_MARGIN, beats_floor
from engine.core.render import CT_WINDOW_HU, ERROR_MAX_HU, to_gray, to_heat
from engine.core.units import unit_to_hu

# Verdict threshold on the body-mask SSIM of the MRI (0 = unrelated, 1 = identical); the leak
# margin over the floor and the control's margin are the engine's.
RECOGNISABLE = 0.6
MRI_ERROR_MAX = 0.5  # |error| map of the MRI: 0 … half the intensity range
STUDY_RESULT = ("For comparison, the study's DLG attack on its own model rebuilt nothing "
                "recognisable: SSIM ≤ 0.16 and PSNR ≤ 11 dB.")
ADAM_DECODED = ("The hospitals train with Adam, whose first step hides the size of the gradient "
                "(every weight moves by almost exactly the learning rate). The attacker reads "
                "the size back from how far each weight's move falls short of the learning "
                "rate, then matches gradients.")
NPZ_KEYS = ("mri", "ct_unit", "true_mri", "true_ct_unit", "mask", "pairs", "prior_mri",
            "prior_ct_unit", "losses", "snapshots_mri", "snapshots_ct_unit",
            "snapshot_iterations")
SWEEP_COMMAND = "fedsct sweep --preset {name}"


# --------------------------------------------------------------------------- runs


class InversionRun(ResultRun):
    """A finished run that carries gradient-inversion results."""

    @property
    def inv(self) -> dict[str, Any]:
        return self.summary["inversion"]

    @property
    def loss(self) -> str:
        return (self.config.get("federation") or {}).get("loss") or ""

    @property
    def defenses(self) -> str:
        return defenses_text(self.config)

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        method = str(self.inv.get("method", "")).upper()
        return f"{self.name} · {when} · {method} · {self.defenses}"

    def npz(self, center: str) -> Path:
        return self.run.path / "inversion" / f"{center}.npz"


def defenses_text(config: dict[str, Any]) -> str:
    """The defenses (and images per step) of a run's config dict, in a few words."""
    defenses = config.get("defenses") or {}
    dp = defenses.get("dp") or {}
    parts = ["secure aggregation"] if defenses.get("secure_aggregation") else []
    if dp.get("enabled"):
        parts.append(f"DP σ {dp.get('noise_multiplier', 0):g}")
    if defenses.get("prune_fraction"):
        parts.append(f"pruning {defenses['prune_fraction']:.0%}")
    data = config.get("data") or {}
    # A step can hold no more slices than the hospital has.
    batch = min((config.get("federation") or {}).get("batch_size") or 1,
                (data.get("patients_per_center") or 1) * (data.get("slices_per_patient") or 1))
    if batch > 1:
        parts.append(f"{batch} slices per step")
    return " + ".join(parts) or "no defense"


def inversion_runs() -> tuple[list[InversionRun], list[Path]]:
    """Finished runs whose summary has an ``inversion`` block, newest first; and the
    summary files of finished inversion runs that are missing or unreadable."""
    runs, damaged = finished_runs_with("inversion", "inversion")
    return [InversionRun(r.run, r.created, r.summary) for r in runs], damaged


# --------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    level: int  # 0 no leak, 1 coarse anatomy, 2 recognisable, -1 inconclusive
    colour: str
    title: str
    center: str | None = None
    ssim_body: float | None = None
    floor: float | None = None


TITLES = (
    ("green", "No leak beyond the attacker's average brain at this attack budget: the rebuilt "
              "images are no closer to the patients' slices than an average brain the "
              "attacker already had, although the same attack rebuilds a slice of a design "
              "known to leak"),
    ("orange", "Coarse anatomy only: the attacker learnt more than its average brain (such as "
               "head size and position), but not a recognisable slice"),
    ("red", "Recognisable slices: the attacker rebuilt patients' images from a hospital's "
            "update"),
)
INCONCLUSIVE = ("gray", "Inconclusive: nothing was rebuilt, but at this budget the attack "
                        "could not rebuild a slice of a design known to leak either, so "
                        "'nothing rebuilt' does not show that nothing leaks")


def leak_level(ssim_body: float, floor: float) -> int:
    if not beats_floor(ssim_body, floor):
        return 0
    return 2 if ssim_body >= RECOGNISABLE else 1


def verdict(inv: dict[str, Any]) -> Verdict:
    """Risk at the hospital where the attack worked best (the worst case), from the body-mask
    SSIM of the reconstructed MRI against the attacker's average brain (the floor). "No leak"
    only where the engine's verdict says so (its calibration control was rebuilt at the same
    budget); runs without a verdict (older engine) are inconclusive unless they leaked."""
    per = inv.get("per_client") or {}
    if not per:
        per = {"": {"ssim_body": inv["ssim_body"], "floor_ssim_body": inv["floor_ssim_body"]}}

    def severity(center: str) -> tuple[int, float]:
        p = per[center]
        s, f = float(p["ssim_body"]), float(p["floor_ssim_body"])
        return leak_level(s, f), s - f

    center = max(per, key=severity)
    level = severity(center)[0]
    worst = (center or None, float(per[center]["ssim_body"]),
             float(per[center]["floor_ssim_body"]))
    if level == 0 and inv.get("verdict") != "no_leak":
        return Verdict(-1, *INCONCLUSIVE, *worst)
    return Verdict(level, *TITLES[level], *worst)


def budget_text(inv: dict[str, Any]) -> str:
    """The attack and its budget in words, e.g. "DLG (L-BFGS, 300 steps × 20 iterations)"."""
    its, restarts = inv.get("iterations"), inv.get("restarts")
    if inv.get("method") == "dlg":
        inner = inv.get("inner_iterations")
        steps = f"{its} steps × {inner} iterations" if inner else f"{its} steps"
        text = f"DLG (L-BFGS gradient matching, {steps}"
    else:
        text = f"Inverting Gradients (cosine matching, {its} iterations"
    return text + f", {restarts} random start{'s' if restarts != 1 else ''})"


def calibration_text(inv: dict[str, Any]) -> str:
    """What the calibration control showed, or that the run has none."""
    cal = inv.get("calibration")
    if not cal:
        return ("This run has no calibration control (it was made by an older version), so a "
                "result without a leak cannot be read as safe.")
    outcome = "rebuilt it" if cal.get("recovered") else "could not rebuild it"
    return (f"Calibration: the same attack at the same budget, on a design known to leak "
            f"({cal.get('design')}, {cal.get('image_size')} px), {outcome}: body SSIM "
            f"{cal['ssim_body']:.2f} vs {cal['floor_ssim_body']:.2f} for its average brain "
            f"(a slice counts as rebuilt from {LEAK_MARGIN:+.2f}, the rule that calls an "
            "upload leaking).")


def verdict_detail(v: Verdict, inv: dict[str, Any]) -> str:
    where = f"Worst-case hospital **{v.center}**" if v.center else "All hospitals"
    text = (f"{where}: body SSIM **{v.ssim_body:.2f}** for the attacker's reconstruction vs "
            f"**{v.floor:.2f}** for its average brain (the floor), a difference of "
            f"**{v.ssim_body - v.floor:+.2f}**.")
    if v.center and len(inv.get("per_client") or {}) > 1:
        text += (f" Averaged over all {len(inv['per_client'])} hospitals: "
                 f"{inv['ssim_body']:.2f} vs {inv['floor_ssim_body']:.2f}.")
    text += (f" Whole image: SSIM {inv['ssim']:.2f}, PSNR {inv['psnr_db']:.1f} dB. Body SSIM "
             "compares structures inside the head (0 = unrelated, 1 = identical); from "
             f"{LEAK_MARGIN} above the floor counts as a leak, {RECOGNISABLE} and clearly "
             "above the floor as recognisable.")
    return text


# --------------------------------------------------------------------------- table


TABLE_COLUMNS = {
    "ssim": ("SSIM ↑", "%.3f", "How similar the rebuilt MRI looks to the original, whole image "
                               "(0 = unrelated, 1 = identical)."),
    "ssim_body": ("Body SSIM ↑", "%.3f", "The same, inside the head only: the verdict's "
                                         "number."),
    "psnr_db": ("PSNR (dB) ↑", "%.1f", "Pixel-by-pixel agreement of the rebuilt MRI with the "
                                       "original, in decibels."),
    "ssim_ct": ("CT SSIM ↑", "%.3f", "How similar the rebuilt CT looks to the original CT."),
    "psnr_db_ct": ("CT PSNR (dB) ↑", "%.1f", "Pixel-by-pixel agreement of the rebuilt CT."),
    "floor_ssim_body": ("Floor body SSIM", "%.3f", "Body SSIM of the attacker's average brain: "
                                                   "what it gets without attacking."),
    "round": ("Round attacked", "%d", "The training round whose upload was inverted."),
}


def client_table(inv: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per attacked hospital, and the column configuration for ``st.dataframe``."""
    rows = [{"Hospital": center, **{k: p.get(k) for k in TABLE_COLUMNS},
             "Slices rebuilt": p.get("n")}
            for center, p in (inv.get("per_client") or {}).items()]
    config = {k: st.column_config.NumberColumn(label, format=fmt, help=help_)
              for k, (label, fmt, help_) in TABLE_COLUMNS.items()}
    return pd.DataFrame(rows), config


# --------------------------------------------------------------------------- images


@st.cache_data(max_entries=32)
def _load_npz(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """A client's reconstruction file, or None when it is missing, damaged or incomplete."""
    try:
        arrays = _load_npz(str(path), path.stat().st_mtime)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    if any(k not in arrays for k in NPZ_KEYS):
        return None
    n = len(arrays["mri"])
    pairs = arrays["pairs"]
    if (arrays["mri"].ndim != 4 or arrays["true_mri"].ndim != 4 or pairs.ndim != 2
            or len(pairs) == 0 or pairs[:, 0].max() >= n
            or pairs[:, 1].max() >= len(arrays["true_mri"])):
        return None
    return arrays


def _gray(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return upscale(to_gray(img, lo, hi))


def pair_panels(arrays: dict[str, np.ndarray], pair: int
                ) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    """Two rows (MRI, CT) of original | reconstruction | |error| | the attacker's average,
    for matched pair ``pair`` (reconstruction i ↔ original j)."""
    i, j = (int(v) for v in arrays["pairs"][pair])
    lo, hi = CT_WINDOW_HU
    mri, true_mri = arrays["mri"][i, 0], arrays["true_mri"][j, 0]
    ct, true_ct = unit_to_hu(arrays["ct_unit"][i, 0]), unit_to_hu(arrays["true_ct_unit"][j, 0])
    window = f"{lo:.0f} to {hi:.0f} HU"
    return [
        ("MRI", [
            (_gray(true_mri, 0, 1), "Original MRI (the hospital's patient)"),
            (_gray(mri, 0, 1), "Attacker's reconstruction"),
            (upscale(to_heat(np.abs(mri - true_mri), MRI_ERROR_MAX)),
             f"|Error| (0 to {MRI_ERROR_MAX:g} of full intensity, brighter = worse)"),
            (_gray(arrays["prior_mri"], 0, 1), "Attacker's average brain (the floor)"),
        ]),
        ("CT", [
            (_gray(true_ct, lo, hi), f"Original CT ({window})"),
            (_gray(ct, lo, hi), f"Attacker's reconstruction ({window})"),
            (upscale(to_heat(np.abs(ct - true_ct), ERROR_MAX_HU)),
             f"|Error| (0 to {ERROR_MAX_HU:.0f} HU, brighter = worse)"),
            (_gray(unit_to_hu(arrays["prior_ct_unit"]), lo, hi),
             f"Attacker's average CT (the floor, {window})"),
        ]),
    ]


def snapshot_panels(arrays: dict[str, np.ndarray], step: int, recon: int
                    ) -> list[tuple[np.ndarray, str]]:
    """The reconstruction ``recon`` at snapshot ``step``: MRI and CT (brain/bone window)."""
    lo, hi = CT_WINDOW_HU
    return [(_gray(arrays["snapshots_mri"][step, recon, 0], 0, 1), "MRI"),
            (_gray(unit_to_hu(arrays["snapshots_ct_unit"][step, recon, 0]), lo, hi),
             f"CT ({lo:.0f} to {hi:.0f} HU)")]


def has_snapshots(arrays: dict[str, np.ndarray]) -> bool:
    s = arrays["snapshots_mri"]
    return (s.ndim == 5 and len(s) > 0 and len(arrays["snapshot_iterations"]) == len(s)
            and arrays["snapshots_ct_unit"].shape == s.shape)


def loss_figure(losses: np.ndarray, marker: int | None) -> go.Figure:
    """Matching loss per iteration on a log scale, with the shown snapshot marked."""
    x = list(range(1, len(losses) + 1))
    y = [float(v) if v > 0 else None for v in losses]  # nothing to draw at ≤ 0 on a log axis
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="matching loss",
                               hovertemplate="iteration %{x}: %{y:.3g}<extra></extra>"))
    if marker is not None:
        fig.add_vline(x=marker, line_dash="dot", line_color="gray")
    fig.update_yaxes(type="log", title_text="matching loss (log scale, lower = closer)")
    fig.update_xaxes(title_text="attack iteration")
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 20, "b": 10})
    return fig


# --------------------------------------------------------------------------- sweeps


def latest_sweep(root: Path, name: str) -> tuple[Path, list[dict[str, Any]]] | None:
    """The newest ``<name>`` sweep table under the runs root, if one has rows."""
    tables = sorted((root / "sweeps").glob(f"{name}-*/table.json"),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for path in tables:
        rows = read_json(path)
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            return path.parent, rows
    return None


def _setting_label(key: str, value: str, keys: set[str]) -> str | None:
    """One ``key=value`` of a sweep cell in plain words (None: said by another key)."""
    v = value.strip()
    if key == "loss":
        return "L1 loss" if v == "l1" else "MSE loss"
    if key == "norm":
        return {"instance": "InstanceNorm", "batch": "BatchNorm"}.get(v, "no normalisation")
    if key == "batch_size":
        return f"{v} slices per step"
    if key == "slices_per_patient":
        return None if "batch_size" in keys else f"{v} slices per patient"
    if key == "local_epochs":
        return f"{v} local steps"
    if key == "target_round":
        return "late round" if v == "last" else "first round" if v == "first" else f"round {v}"
    if key == "server_view_rounds":
        return None if "target_round" in keys else f"server sees rounds {v}"
    if key == "image_size":
        return f"{v} px"
    if key == "secure_aggregation":
        return "secure aggregation" if v == "true" else "no secure aggregation"
    if key == "noise_multiplier":
        return f"DP σ {v}"
    if key == "target_epsilon":
        return f"DP ε {float(v):g}"
    if key in ("enabled", "clip_norm", "level"):
        return None if keys & {"noise_multiplier", "target_epsilon"} else f"{key}={v}"
    if key == "optimizer":
        return "Adam" if v == "adam" else "plain SGD"
    if key == "lr":
        return None if "optimizer" in keys else f"learning rate {v}"
    if key == "adam":
        return ("attacker differentiates through Adam's step" if v == "simulate"
                else "attacker reads Adam's step back")
    if key == "iterations":
        return f"{int(v):,} iterations"
    if key == "tv_weight":
        return f"TV weight {v}"
    if key == "target_center":
        return None
    if key == "prune_fraction":
        return f"pruning {float(v):.0%}"
    return f"{key}={v}"


def cell_text(row: dict[str, Any], baseline: str) -> str:
    """A sweep row's cell label (``loss=l1, norm=instance``) in short plain words."""
    cell = str(row.get("cell") or "baseline")
    if cell == "baseline":
        return baseline
    parts = [p.split("=", 1) for p in re.split(r", (?=\w+=)", cell) if "=" in p]
    keys = {k for k, _ in parts}
    words = [w for k, v in parts if (w := _setting_label(k, v, keys))]
    return " + ".join(words) or cell


def factor_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Body SSIM of the reconstruction per factor, beside the attacker's average brain."""
    x = [cell_text(r, "vulnerable design") for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=[r.get("inversion_ssim_body") for r in rows],
                         name="attacker's reconstruction", marker_color="#c0392b",
                         hovertemplate="%{x}: body SSIM %{y:.2f}<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=[r.get("inversion_floor_ssim_body") for r in rows],
                         name="attacker's average brain (floor)", marker_color="#95a5a6",
                         hovertemplate="%{x}: floor %{y:.2f}<extra></extra>"))
    fig.add_hline(y=RECOGNISABLE, line_dash="dot", line_color="gray",
                  annotation_text="recognisable", annotation_position="top left")
    fig.update_yaxes(title_text="body SSIM (1 = identical)", range=[0, 1.02])
    fig.update_layout(barmode="group", height=380, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def defense_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per defense: leak (body SSIM, floor) and cost (sCT MAE, change)."""
    base = next((r.get("mae_hu") for r in rows if r.get("cell") == "baseline"), None)
    out = []
    for r in rows:
        mae = r.get("mae_hu")
        out.append({
            "Defense": cell_text(r, "no defense"),
            "Body SSIM of the reconstruction": r.get("inversion_ssim_body"),
            "Floor body SSIM": r.get("inversion_floor_ssim_body"),
            "Model error, MAE (HU)": mae,
            "Extra error (HU)": (mae - base) if mae is not None and base is not None else None,
            "Run id": r.get("run_id"),
        })
    return pd.DataFrame(out)


def defense_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Each defense as a point: how much leaks (up) against what it costs the model (right)."""
    labels = [cell_text(r, "no defense") for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[r.get("mae_hu") for r in rows], y=[r.get("inversion_ssim_body") for r in rows],
        mode="markers+text", text=labels, textposition="top center", name="defense",
        marker={"size": 11, "color": "#c0392b"},
        hovertemplate="%{text}<br>MAE %{x:.0f} HU · body SSIM %{y:.2f}<extra></extra>"))
    floors = [r.get("inversion_floor_ssim_body") for r in rows if
              r.get("inversion_floor_ssim_body") is not None]
    if floors:
        fig.add_hline(y=float(np.mean(floors)), line_dash="dot", line_color="gray",
                      annotation_text="attacker's average brain (floor)",
                      annotation_position="bottom right")
    fig.update_yaxes(title_text="body SSIM of the reconstruction (lower = safer)",
                     range=[0, 1.02])
    fig.update_xaxes(title_text="model error, MAE (HU), lower = better")
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      showlegend=False)
    return fig


def sweep_cells(folder: Path, rows: list[dict[str, Any]]) -> int:
    """How many cells the sweep has in all (rows so far when ``sweep.json`` is unreadable)."""
    spec = read_json(folder / "sweep.json")
    cells = spec.get("cells") if isinstance(spec, dict) else None
    return len(cells) if isinstance(cells, list) else len(rows)
