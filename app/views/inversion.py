"""Display helpers for the Gradient inversion page: run listing, verdict, images, sweep charts.

Only formats what the engine wrote (``summary.json``'s ``inversion`` block, the per-hospital
``inversion/<center>.npz`` and the ``inversion-factors`` / ``inversion-defenses`` sweep
tables); the only numbers derived here are differences and the |error| maps for display.
"""

from __future__ import annotations

import functools
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.common import Verdict, hospital_name, log_ticks, upscale
from app.views.results import RunRow, finished_with
from engine.analyses.results import InversionSummary
from engine.analyses.sweep_table import SweepRow
from engine.core.config import ExperimentConfig
from engine.core.reconstruction_metrics import LEAK_MARGIN
from engine.core.render import CT_WINDOW_HU, ERROR_MAX_HU, to_gray, to_heat
from engine.core.units import unit_to_hu

# Body-mask SSIM of the MRI (0 = unrelated, 1 = identical) from which a leak counts as a
# recognisable slice; whether there is a leak at all is the engine's leak test.
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

INTRO = ("In a **gradient-inversion attack**, a curious server takes one hospital's model update "
         "and searches for images that would have produced exactly that update, hoping to "
         "rebuild the patients' scans. The result is compared with the real slices and, in the "
         "same way, with **unrelated patients' slices** (the null): only what clearly beats the "
         "null was learnt from the hospital. Pick a finished attack run below, or start one.")
EMPTY = ("No gradient-inversion results yet. Start 'Attack a vulnerable design' above to see a "
         "leak, then the study's DLG attack to see why the study found none.")
# What each hospital's inversion/<center>.png shows, left to right (engine.attacks.inversion).
STRIP_CAPTION = "MRI: original | rebuilt · CT: original | rebuilt (the first matched slice)"


# --------------------------------------------------------------------------- runs


class InversionRun(RunRow):
    """A finished run that carries gradient-inversion results."""

    @property
    def inv(self) -> InversionSummary:
        assert self.summary is not None and self.summary.inversion is not None
        return self.summary.inversion

    @property
    def loss(self) -> str:
        return self.cfg.federation.loss if self.cfg else ""

    @property
    def short_defenses(self) -> str:
        parts = [self.defenses] if self.defenses not in ("", "none") else []
        batch = slices_per_step(self.cfg) if self.cfg else 1
        if batch > 1:
            parts.append(f"{batch} slices per step")
        return " + ".join(parts) or "no defense"

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        return f"{self.name} · {when} · {self.inv.method.upper()} · {self.short_defenses}"

    def npz(self, center: str) -> Path:
        return self.path / "inversion" / f"{center}.npz"


def slices_per_step(cfg: ExperimentConfig) -> int:
    """Slices in one local step of a run (no more than a hospital has)."""
    return min(cfg.federation.batch_size,
               cfg.data.patients_per_center * cfg.data.slices_per_patient)


def inversion_runs(rows: list[RunRow]) -> tuple[list[InversionRun], list[Path]]:
    """The finished runs of ``rows`` that carry inversion results, newest first; and the
    summary files of finished inversion runs that are missing or unreadable."""
    runs, damaged = finished_with(rows, "inversion")
    return [InversionRun(**vars(r)) for r in runs], damaged


# --------------------------------------------------------------------------- verdict


TITLES = (
    ("green", "No leak at this attack budget: the rebuilt images are no closer to the "
              "patients' slices than to unrelated patients' slices, although the same attack "
              "rebuilds uploads of this difficulty from a network without normalisation"),
    ("orange", "Coarse anatomy only: the attacker learnt more than unrelated anatomy gives "
               "(such as head size and position), but not a recognisable slice"),
    ("red", "Recognisable slices: the attacker rebuilt patients' images from a hospital's "
            "update"),
)
INCONCLUSIVE = ("gray", "Inconclusive: nothing was rebuilt, but at this budget the attack "
                        "could not reliably rebuild the control uploads of the same difficulty "
                        "either, so 'nothing rebuilt' does not show that nothing leaks")

VERDICT_WORDS = {"leak": "leak", "no_leak": "no leak", "inconclusive": "inconclusive"}
NULL_WORDS = ("unrelated patients' slices, paired with the rebuilt images in the same way "
              "(the null)")


def leak_level(ssim_body: float, leak: bool) -> int:
    """0 no leak, 1 coarse anatomy, 2 recognisable."""
    if not leak:
        return 0
    return 2 if ssim_body >= RECOGNISABLE else 1


def client_leak(p: Any) -> tuple[float, float, bool]:
    """``(body SSIM, baseline, leak)`` of an inversion result (a hospital's, or the what-if
    patient's): the leak test's null mean and decision; runs made before the leak test
    compared against the attacker's average brain with the margin."""
    if p.leak is None or p.null_ssim_body is None:
        return p.ssim_body, p.floor_ssim_body, p.ssim_body - p.floor_ssim_body >= LEAK_MARGIN
    return p.ssim_body, p.null_ssim_body, bool(p.leak)


def worst_client(inv: InversionSummary) -> tuple[str | None, int, float, float]:
    """(hospital, leak level, body SSIM, baseline) where the attack worked best."""
    per = {c: client_leak(p) for c, p in inv.per_client.items()}

    def severity(c: str) -> tuple[int, float]:
        s, base, leak = per[c]
        return leak_level(s, leak), s - base

    if not per:
        return None, 0, inv.ssim_body, inv.floor_ssim_body
    center = max(per, key=severity)
    return center, severity(center)[0], *per[center][:2]


def verdict(inv: InversionSummary) -> Verdict:
    """Risk at the hospital where the attack worked best (the worst case), from the leak
    test: the body-mask SSIM of the reconstructed MRI against the hospital's slices beside
    the same reconstruction against unrelated patients' slices (the null). "No leak" only
    where the engine's verdict says so (its calibration controls were rebuilt at the same
    budget); runs without a verdict (older engine) are inconclusive unless they leaked."""
    center, level, ssim_body, base = worst_client(inv)
    where = f"Worst-case hospital **{hospital_name(center)}**" if center else "All hospitals"
    masked = inv.observed == "aggregate"
    if masked:
        slices = inv.per_client[center].n if center else 0
        where = ("Secure aggregation masked every hospital's upload, so the server holds only "
                 f"the round's aggregate; the attack rebuilt the {slices} slices of all "
                 "hospitals from that aggregate at once. **All hospitals**")
    null = inv.null
    basis = (f"for {NULL_WORDS}" if null else "for the attacker's average brain (the floor)")
    detail = (f"{where}: body SSIM **{ssim_body:.2f}** for the attacker's reconstruction vs "
              f"**{base:.2f}** {basis}, a difference of **{ssim_body - base:+.2f}**.")
    if center and len(inv.per_client) > 1 and inv.null_ssim_body is not None and not masked:
        detail += (f" Averaged over all {len(inv.per_client)} hospitals: "
                   f"{inv.ssim_body:.2f} vs {inv.null_ssim_body:.2f}.")
    detail += (f" Whole image: SSIM {inv.ssim:.2f}, PSNR {inv.psnr_db:.1f} dB. Body SSIM "
               "compares structures inside the head (0 = unrelated, 1 = identical). ")
    if null:
        detail += (f"A leak must beat the null's mean by at least {null.margin:.2f} and "
                   f"match the hospital's own slices better than {null.quantile:.0%} of the "
                   f"sets of unrelated patients (p ≤ {1 - null.quantile:.2f}; drawn from at "
                   f"least {null.reference_patients} patients of the same scanner; the null's "
                   f"{null.quantile:.0%} point lies up to {null.gain:.2f} above its mean);")
    else:
        detail += f"This run counted {LEAK_MARGIN} above the floor as a leak;"
    detail += (f" {RECOGNISABLE} and a leak as recognisable.\n\n{calibration_text(inv)}")
    figure = f"body SSIM {ssim_body:.2f} vs {'null' if null else 'floor'} {base:.2f}"
    if level == 0 and inv.verdict != "no_leak":
        return Verdict(*INCONCLUSIVE, detail, figure + " · inconclusive")
    colour, title = TITLES[level]
    return Verdict(colour, title, detail, figure)


def budget_text(inv: InversionSummary) -> str:
    """The attack and its budget in words, e.g. "DLG (L-BFGS, 300 steps × 20 iterations)"."""
    if inv.method == "dlg":
        steps = (f"{inv.iterations} steps × {inv.inner_iterations} iterations"
                 if inv.inner_iterations else f"{inv.iterations} steps")
        text = f"DLG (L-BFGS gradient matching, {steps}"
    else:
        text = f"Inverting Gradients (cosine matching, {inv.iterations} iterations"
    return text + f", {inv.restarts} random start{'s' if inv.restarts != 1 else ''})"


def calibration_text(inv: InversionSummary) -> str:
    """What the calibration controls showed, or that the run has none."""
    cal = inv.calibration
    if cal is None:
        return ("This run has no calibration control (it was made by an older version), so a "
                "result without a leak cannot be read as safe.")
    if not cal.trials:  # one fixed easy control (older runs)
        outcome = "rebuilt it" if cal.recovered else "could not rebuild it"
        return (f"Calibration: the same attack at the same budget, on a design known to leak "
                f"({cal.design}, {cal.image_size} px), {outcome}: body SSIM "
                f"{cal.ssim_body:.2f} vs {cal.floor_ssim_body:.2f} for its average brain. "
                "This older control did not match the target's difficulty.")
    done = sum(t.recovered for t in cal.trials)
    lo, hi = cal.rate_ci or (0.0, 1.0)
    return (f"Calibration: the same attack at the same budget on {cal.total} control "
            f"upload{'s' if cal.total != 1 else ''} of the same difficulty ({cal.design}, "
            f"{cal.image_size} px; each with other slices and another start) rebuilt "
            f"**{done} of {cal.total}** by the same leak rule (95 % interval "
            f"{lo:.0%}–{hi:.0%}; mean body SSIM {cal.ssim_body:.2f} vs null "
            f"{np.mean([t.null_ssim_body for t in cal.trials]):.2f}). \"No leak\" needs "
            "every control rebuilt.")


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
    "null_ssim_body": ("Null body SSIM", "%.3f", "Body SSIM of the same rebuilt images against "
                                                 "unrelated patients' slices, paired the same "
                                                 "way (the leak test's null, its mean)."),
    "p_value": ("Leak test p", "%.4f", "Share of unrelated patients' slice sets the rebuilt "
                                       "images match at least as well as the hospital's own; "
                                       "a leak needs p ≤ 0.01 and body SSIM at least 0.05 "
                                       "above the null."),
    "floor_ssim_body": ("Floor body SSIM", "%.3f", "Body SSIM of the attacker's average brain: "
                                                   "what it gets without attacking."),
    "round": ("Round attacked", "%d", "The training round whose upload was inverted."),
}


def client_table(inv: InversionSummary
                 ) -> tuple[pd.DataFrame, dict[str, tuple[str, str, str]]]:
    """One row per attacked hospital, and each number column's (label, format, help)."""
    rows = [{"Hospital": hospital_name(center),
             **{k: getattr(p, k) for k in TABLE_COLUMNS}, "Slices rebuilt": p.n}
            for center, p in inv.per_client.items()]
    return pd.DataFrame(rows), TABLE_COLUMNS


# --------------------------------------------------------------------------- images


@functools.lru_cache(maxsize=32)
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
    fig.update_yaxes(type="log", title_text="matching loss (log scale, lower = closer)",
                     **log_ticks(losses.ravel().tolist()))
    fig.update_xaxes(title_text="attack iteration")
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 20, "b": 10})
    return fig


# --------------------------------------------------------------------------- sweeps


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


def cell_text(row: SweepRow, baseline: str) -> str:
    """A sweep row's cell label (``loss=l1, norm=instance``) in short plain words."""
    cell = str(row.cell or "baseline")
    if cell == "baseline":
        return baseline
    parts = [p.split("=", 1) for p in re.split(r", (?=\w+=)", cell) if "=" in p]
    keys = {k for k, _ in parts}
    words = [w for k, v in parts if (w := _setting_label(k, v, keys))]
    return " + ".join(words) or cell


def factor_figure(rows: list[SweepRow]) -> go.Figure:
    """Body SSIM of the reconstruction per factor, beside the attacker's average brain."""
    x = [cell_text(r, "vulnerable design") for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=[r.inversion_ssim_body for r in rows],
                         name="attacker's reconstruction", marker_color="#c0392b",
                         hovertemplate="%{x}: body SSIM %{y:.2f}<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=[r.inversion_floor_ssim_body for r in rows],
                         name="attacker's average brain (floor)", marker_color="#95a5a6",
                         hovertemplate="%{x}: floor %{y:.2f}<extra></extra>"))
    fig.add_hline(y=RECOGNISABLE, line_dash="dot", line_color="gray",
                  annotation_text="recognisable", annotation_position="top left")
    fig.update_yaxes(title_text="body SSIM (1 = identical)", range=[0, 1.02])
    fig.update_layout(barmode="group", height=380, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def defense_table(rows: list[SweepRow]) -> pd.DataFrame:
    """One row per defense: leak (body SSIM, floor) and cost (sCT MAE, change)."""
    base = next((r.mae_hu for r in rows if r.cell == "baseline"), None)
    out = []
    for r in rows:
        mae = r.mae_hu
        out.append({
            "Defense": cell_text(r, "no defense"),
            "Body SSIM of the reconstruction": r.inversion_ssim_body,
            "Floor body SSIM": r.inversion_floor_ssim_body,
            "Model error, MAE (HU)": mae,
            "Extra error (HU)": (mae - base) if mae is not None and base is not None else None,
            "Run id": r.run_id,
        })
    return pd.DataFrame(out)


def defense_figure(rows: list[SweepRow]) -> go.Figure:
    """Each defense as a point: how much leaks (up) against what it costs the model (right)."""
    labels = [cell_text(r, "no defense") for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[r.mae_hu for r in rows], y=[r.inversion_ssim_body for r in rows],
        mode="markers+text", text=labels, textposition="top center", name="defense",
        marker={"size": 11, "color": "#c0392b"},
        hovertemplate="%{text}<br>MAE %{x:.0f} HU · body SSIM %{y:.2f}<extra></extra>"))
    floors = [r.inversion_floor_ssim_body for r in rows if
              r.inversion_floor_ssim_body is not None]
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


def cell_words(label: str | None) -> str:
    """A running sweep cell's label in words (the progress line of a study)."""
    return cell_text({"cell": label}, "the design as is")


def budget_figure(rows: list[SweepRow]) -> go.Figure:
    """How the attack improves with its budget (cells at the default TV weight): body SSIM
    of the reconstruction and of the calibration control, each beside its floor, and the
    final matching loss, against attack iterations (log scale)."""
    tv = [r.inversion_tv_weight for r in rows]
    default_tv = max(set(tv), key=tv.count) if tv else None
    rows = sorted((r for r in rows if r.inversion_tv_weight == default_tv),
                  key=lambda r: r.inversion_iterations or 0)
    x = [r.inversion_iterations for r in rows]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=(
        "how close the attacker gets (body SSIM)", "matching loss it reaches"))
    for key, name, colour, dash in (
            ("inversion_ssim_body", "study's model: reconstruction", "#c0392b", "solid"),
            ("inversion_floor_ssim_body", "study's model: average brain (floor)", "#c0392b",
             "dot"),
            ("calibration_ssim_body", "calibration controls: reconstruction", "#2471a3", "solid"),
            ("calibration_floor_ssim_body", "calibration controls: floor", "#2471a3", "dot")):
        fig.add_trace(go.Scatter(x=x, y=[r.column(key) for r in rows], name=name,
                                 mode="lines+markers", line={"color": colour, "dash": dash},
                                 hovertemplate="%{x:,} iterations: %{y:.3f}<extra></extra>"),
                      row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[r.inversion_final_loss for r in rows],
                             name="matching loss", mode="lines+markers", showlegend=False,
                             line={"color": "#7f8c8d"},
                             hovertemplate="%{x:,} iterations: %{y:.3g}<extra></extra>"),
                  row=1, col=2)
    fig.update_xaxes(type="log", title_text="attack iterations per restart (log scale)",
                     **log_ticks(x))
    fig.update_yaxes(title_text="body SSIM (1 = identical)", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="matching loss (log, lower = closer)", type="log",
                     row=1, col=2, **log_ticks(r.inversion_final_loss for r in rows))
    fig.update_layout(height=400, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def budget_table(rows: list[SweepRow]) -> pd.DataFrame:
    """Every budget cell: iterations, TV weight, the attack's and the control's body SSIM
    beside their floors, and the verdict the run reached."""
    return pd.DataFrame([{
        "Iterations": r.inversion_iterations,
        "Restarts": r.inversion_restarts,
        "TV weight": r.inversion_tv_weight,
        "Body SSIM": r.inversion_ssim_body,
        "Floor": r.inversion_floor_ssim_body,
        "Control body SSIM": r.calibration_ssim_body,
        "Control floor": r.calibration_floor_ssim_body,
        "Matching loss": r.inversion_final_loss,
        "Verdict": VERDICT_WORDS.get(str(r.inversion_verdict), "—"),
        "Run id": r.run_id,
    } for r in rows])


# --------------------------------------------------------------------------- defenses form

DEFENDED_PRESET = "inversion-easy"  # the vulnerable design the defenses form protects
DP_LEVELS = {"off": None, "weak (ε 64)": 64.0, "strong (ε 4)": 4.0}
PRUNE_LEVELS = {"off": None, "90% of each update": 0.9, "99% of each update": 0.99}


def defense_sets(*, secagg: bool, slices: bool, epsilon: float | None,
                 prune: float | None) -> list[str]:
    """The ``--set`` overrides of :data:`DEFENDED_PRESET` for the chosen defenses: secure
    aggregation, 4 slices per step, hospital-level DP at ``epsilon`` (clip norm 0.05),
    pruning of the ``prune`` share of each update."""
    sets = []
    if secagg:
        sets.append("defenses.secure_aggregation=true")
    if epsilon is not None:
        sets += ["defenses.dp.enabled=true", "defenses.dp.clip_norm=0.05",
                 f"defenses.dp.target_epsilon={epsilon}"]
    if prune is not None:
        sets.append(f"defenses.prune_fraction={prune}")
    if slices:
        sets += ["data.slices_per_patient=4", "federation.batch_size=4"]
    return sets
