"""Small display helpers shared by the pages: plain-language text, charts, tables, images.

Everything here only formats what the engine computed; no numbers are derived beyond
differences for display.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app.state import remember, remembered
from engine.clients.dp import epsilon_text, planned_epsilon
from engine.core.config import ConfigError, ExperimentConfig
from engine.core.render import CT_WINDOW_HU, ERROR_MAX_HU, to_gray, to_heat
from engine.core.run_folder import ACTIVE, RunFolder
from engine.orchestration import jobs
from engine.orchestration.presets import build_config, preset_description
from engine.orchestration.store import open_run

ROOT = Path(__file__).resolve().parents[1]
PAGES_DIR = ROOT / "pages"
ASSETS_DIR = ROOT / "assets"
UNSEEN_LABEL = "unseen hospital (never trained)"

METRIC_HELP = {
    "mae_hu": "MAE: average error of the synthetic CT in Hounsfield units (lower is better).",
    "psnr_db": "PSNR: signal-to-noise ratio of the synthetic CT in decibels (higher is better).",
    "ssim": "SSIM: how similar the structures look, from 0 to 1 (higher is better).",
}

AGGREGATOR_HELP = {
    "fedavg": "Averages all hospitals' updates, weighted by how much data each has "
              "(the standard rule).",
    "fedprox": "Averages the updates but keeps each hospital close to the shared model; "
               "helps when hospitals' scanners differ.",
    "fedmedian": "Takes the middle value of the updates, so one misbehaving hospital "
                 "cannot drag the model far.",
    "trimmed_mean": "Drops the most extreme updates on both sides, then averages the rest.",
    "krum": "Keeps only the single update most similar to the others and ignores outliers "
            "(needs many hospitals).",
    "multikrum": "Averages the few updates most similar to the others, ignoring outliers.",
    "bulyan": "Combines Krum with trimming for the strongest protection against attackers "
              "(needs the most hospitals).",
}

STATE_TEXT = {"queued": "waiting to start", "running": "running", "done": "finished",
              "failed": "failed", "cancelled": "stopped"}

PHASE_TEXT = {"data": "Preparing the hospitals' images…",
              "training": "Hospitals are training the shared model…",
              "membership inference": "Training done; the curious server is now testing "
                                      "which patients each hospital trained on…",
              "gradient inversion": "Training done; the curious server is now rebuilding "
                                    "hospitals' images from their uploads…",
              "poisoning baseline": "Training done; now training the same federation "
                                    "without attackers, for comparison…"}


def sidebar(runs_folder: Path) -> None:
    st.sidebar.caption(
        "A safe sandbox: simulated hospitals jointly train a model that turns brain MRI "
        "into synthetic CT, so you can see how attacks and defenses behave."
    )
    st.sidebar.caption(f"Runs folder: `{runs_folder}`")


@st.fragment(run_every=1.0)
def job_progress(run_id: str, total_rounds: int) -> None:
    """Progress bar of a background run; reruns the whole page once the run ends."""
    progress_bar(run_id, total_rounds)


def remembered_run(param: str, instead: str) -> tuple[RunFolder | None,
                                                    ExperimentConfig | None, dict[str, Any]]:
    """The run remembered under ``param`` (URL and session), its config and status. One that
    can't be opened is forgotten with a warning saying what is shown ``instead``."""
    run_id = remembered(param)
    if run_id:
        try:
            run = open_run(run_id)
            cfg = run.config()
        except (FileNotFoundError, OSError, ConfigError):
            st.warning(f"Run `{run_id}` can't be opened (deleted or damaged); showing "
                       f"{instead}.")
            remember(param, None)
        else:
            return run, cfg, run.status()
    return None, None, {}


def preset_jobs(param: str, presets: tuple[tuple[str, str], ...], *, intro: str, kind: str,
                retry: str, note: str | None = None) -> bool:
    """Start buttons for attack presets (one background run at a time) and the progress,
    stop button and failure of the run started here (remembered under ``param``).

    Returns whether that run is active.
    """
    job, cfg, status = remembered_run(param, f"the newest {kind} run instead")
    active = status.get("state") in ACTIVE
    with st.container(border=True):
        st.markdown(intro)
        for col, (preset, label) in zip(st.columns(len(presets)), presets, strict=True):
            if col.button(label, key=f"start_{preset}", disabled=active,
                          help="One run at a time: wait for the current run or stop it."
                          if active else preset_description(preset)):
                try:
                    remember(param, jobs.start_job(build_config(preset),
                                                   preset=preset).run_id)
                except ConfigError as err:  # a preset the engine no longer accepts
                    st.error(f"The '{preset}' preset can't be started: {err}")
                else:
                    st.rerun()
        if job and cfg and active:
            st.markdown(f"Running **{cfg.name or 'run'}** (run id `{job.run_id}`); its results "
                        "appear below when it finishes.")
            job_progress(job.run_id, cfg.federation.rounds)
            if note:
                st.caption(note)
            if st.button("Stop this run", icon=":material/stop_circle:", key="cancel"):
                with st.spinner("Stopping: the current hospital finishes its step first…"):
                    jobs.cancel_job(job, grace_s=15)
                st.rerun()
        elif status.get("state") == "failed":
            st.error(f"The last attack run failed: {status.get('error') or 'unknown error'}. "
                     f"Try the '{retry}' preset again; the Federation page shows its log.")
    return active


def progress_bar(run_id: str, total_rounds: int) -> list[dict[str, Any]]:
    """Draw a run's progress and return its per-round records; once the run is no longer
    active, rerun the whole page instead (call from inside a polling fragment)."""
    try:
        run = open_run(run_id)
    except FileNotFoundError:
        st.rerun(scope="app")
    status = run.status()
    if status.get("state") not in ACTIVE:
        st.rerun(scope="app")
    records = run.metrics()
    done = records[-1]["round"] if records else 0
    if status.get("state") == "queued":
        text = "Waiting to start…"
    else:
        text = f"{PHASE_TEXT.get(status.get('phase'), 'Working…')} Round {done} of {total_rounds}."
    st.progress(min(done / total_rounds, 1.0), text=text)
    return records


def describe_config(cfg: ExperimentConfig) -> str:
    """One plain sentence summarising a run's settings."""
    fed, dp = cfg.federation, cfg.defenses.dp
    unseen = " + 1 unseen hospital" if cfg.data.unseen_center else ""
    level = "patient-level" if dp.level == "sample" else "hospital-level"
    privacy = (f"{level} differential privacy, {epsilon_text(planned_epsilon(cfg))}"
               if dp.enabled else "no differential privacy")
    secagg = f"secure aggregation {'on' if cfg.defenses.secure_aggregation else 'off'}"
    where = "" if fed.runtime == "inprocess" else f" · on {fed.runtime}"
    return (f"{cfg.data.centers} hospitals{unseen} · {fed.rounds} rounds · "
            f"{fed.aggregator} · {secagg} · {privacy} · {cfg.data.image_size} px images{where}")


def run_label(rec: dict[str, Any]) -> str:
    """A run-list row as one line: when, name, rule and result."""
    when = time.strftime("%d %b %H:%M", time.localtime(rec["created"] or 0))
    mae = f" · MAE {rec['final_mae_hu']:.0f} HU" if rec.get("final_mae_hu") is not None else ""
    return f"{when} · {rec['name'] or 'run'} · {rec['aggregator']} · {rec['rounds']} rounds{mae}"


def runs_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({
        "Started": [time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] or 0))
                    for r in records],
        "Name": [r["name"] or "run" for r in records],
        "State": [STATE_TEXT.get(r["state"], r["state"]) for r in records],
        "Aggregation rule": [r["aggregator"] for r in records],
        "Rounds": [r["rounds"] for r in records],
        "Secure aggregation": [bool(r["secure_aggregation"]) for r in records],
        "Final MAE (HU)": [r["final_mae_hu"] for r in records],
        "Run id": [r["run_id"] for r in records],
    })


def history_from_metrics(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-round metric records → the summary's history format (rounds with an evaluation)."""
    return [{"round": r["round"], **r["global"]} for r in records if r.get("global")]


def history_figure(history: list[dict[str, Any]], total_rounds: int) -> go.Figure:
    """MAE, PSNR and SSIM per round side by side (their scales differ too much to share)."""
    titles = ("Average error, MAE (HU) — lower is better", "PSNR (dB) — higher is better",
              "SSIM (0–1) — higher is better")
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.08)
    rounds = [h["round"] for h in history]
    for col, key in enumerate(("mae_hu", "psnr_db", "ssim"), start=1):
        fig.add_trace(go.Scatter(x=rounds, y=[h[key] for h in history], mode="lines+markers",
                                 name=key, showlegend=False,
                                 hovertemplate="round %{x}: %{y:.3g}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="round (0 = untrained)", range=[-0.3, total_rounds + 0.3],
                         dtick=max(1, total_rounds // 10), row=1, col=col)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 50, "b": 10})
    fig.update_annotations(font_size=13)
    return fig


def metric_cards(history: list[dict[str, Any]], final: dict[str, float]) -> None:
    """Final MAE/PSNR/SSIM with the change since the untrained model (round 0)."""
    start = history[0] if history and history[0]["round"] == 0 else None
    specs = (("Average error (MAE)", "mae_hu", "{:.0f} HU", "{:+.0f} HU", "inverse"),
             ("Image quality (PSNR)", "psnr_db", "{:.2f} dB", "{:+.2f} dB", "normal"),
             ("Structural similarity (SSIM)", "ssim", "{:.3f}", "{:+.3f}", "normal"))
    for col, (label, key, fmt, dfmt, colour) in zip(st.columns(3), specs, strict=True):
        # An ASCII sign on the delta string is what sets the arrow's direction.
        delta = dfmt.format(final[key] - start[key]) if start is not None else None
        col.metric(label, fmt.format(final[key]), delta=delta, delta_color=colour,
                   delta_description="since the untrained model" if delta else None,
                   help=METRIC_HELP[key], border=True)


def center_table(per_center: dict[str, dict[str, float]],
                 unseen: dict[str, float] | None) -> None:
    rows = [{"Hospital": name, "Role": "trained with the federation", **m}
            for name, m in per_center.items()]
    if unseen:
        rows.append({"Hospital": UNSEEN_LABEL, "Role": "test only: never shared any data",
                     **unseen})
    st.dataframe(
        pd.DataFrame(rows), hide_index=True,
        column_config={
            "mae_hu": st.column_config.NumberColumn("MAE (HU) ↓", format="%.0f",
                                                    help=METRIC_HELP["mae_hu"]),
            "psnr_db": st.column_config.NumberColumn("PSNR (dB) ↑", format="%.2f",
                                                     help=METRIC_HELP["psnr_db"]),
            "ssim": st.column_config.NumberColumn("SSIM ↑", format="%.3f",
                                                  help=METRIC_HELP["ssim"]),
        },
    )


def upscale(img: np.ndarray, target: int = 192) -> np.ndarray:
    # Nearest-neighbour so each pixel stays a visible block instead of a blur.
    k = max(1, target // img.shape[0])
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


@st.cache_data(max_entries=32)
def _load_samples(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def sample_images(npz: Path, trained: list[str]) -> None:
    """One row per hospital: MRI | real CT | synthetic CT | error map, with units."""
    if not npz.is_file():
        st.info("This run has no sample images.")
        return
    arrays = _load_samples(str(npz), npz.stat().st_mtime)
    names = list(dict.fromkeys(k.split("__")[0] for k in arrays))
    lo, hi = CT_WINDOW_HU
    captions = ["MRI (input)", f"Real CT ({lo:.0f} to {hi:.0f} HU)",
                f"Synthetic CT ({lo:.0f} to {hi:.0f} HU)",
                f"Error |CT − sCT| inside the head (0 to {ERROR_MAX_HU:.0f} HU, brighter = worse)"]
    for name in names:
        mri, ct, sct, mask = (arrays[f"{name}__{k}"] for k in ("mri", "ct_hu", "sct_hu", "mask"))
        error = to_heat(np.where(mask, np.abs(ct - sct), 0), ERROR_MAX_HU)
        panels = [to_gray(mri, 0, 1), to_gray(ct, lo, hi), to_gray(sct, lo, hi), error]
        title = name
        if name not in trained:
            title = UNSEEN_LABEL if name == "unseen" else f"{UNSEEN_LABEL} ({name})"
        st.markdown(f"**{title}** · one held-out slice")
        for col, img, cap in zip(st.columns(4), panels, captions, strict=True):
            col.image(upscale(img), caption=cap, width="stretch")


def report_page_error(page_title: str, err: Exception) -> Path:
    """Append ``err``'s traceback to ``<runs root>/dashboard-errors.log``; returns its path."""
    import traceback

    from engine.orchestration.store import runs_root

    log = runs_root() / "dashboard-errors.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} page {page_title!r}\n")
            fh.write("".join(traceback.format_exception(err)))
    except OSError:
        pass  # an unwritable runs folder must not turn the message into a traceback
    return log
