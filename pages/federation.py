"""Federation: choose settings, train in the background, watch progress, read the results."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.state import current_run_id, forget, persisted, set_current_run
from app.ui import (
    AGGREGATOR_HELP,
    METRIC_HELP,
    center_table,
    describe_config,
    history_figure,
    history_from_metrics,
    metric_cards,
    progress_bar,
    run_label,
    sample_images,
)
from engine.core.config import AGGREGATORS, ConfigError, ExperimentConfig
from engine.core.run_folder import ACTIVE, RunFolder
from engine.orchestration.jobs import cancel_job, start_job
from engine.orchestration.presets import build_config, preset_description, preset_names
from engine.orchestration.store import RunIndex, open_run

CUSTOM = ("centers", "rounds", "aggregator", "fedprox_mu", "secagg", "dp", "dp_noise", "dp_clip",
          "runtime")
RUNTIMES = {"inprocess": "In this process (fastest)",
            "flower-sim": "Flower simulation (adds 10–35 s to start)",
            "flower-deploy": "Flower: a real SuperLink + one SuperNode per hospital on this "
                             "machine (slowest; what a real deployment runs)"}


def _preset_changed() -> None:
    # Custom values were seeded from the old preset; reseed them from the new one.
    forget(*CUSTOM)


def _custom_overrides(base: ExperimentConfig) -> dict[str, Any]:
    """The "customise" widgets, seeded from the preset; returns config overrides."""
    left, right = st.columns(2)
    centers = persisted(left.number_input, "Number of hospitals", "centers", base.data.centers,
                        min_value=1, max_value=16, step=1,
                        help="How many simulated hospitals train together.")
    rounds = persisted(right.number_input, "Training rounds", "rounds", base.federation.rounds,
                       min_value=1, max_value=200, step=1,
                       help="In each round every hospital trains locally, then the server "
                            "combines the updates. More rounds take longer.")
    aggregator = persisted(st.selectbox, "How the server combines the updates", "aggregator",
                           base.federation.aggregator, options=list(AGGREGATORS))
    st.caption(AGGREGATOR_HELP.get(aggregator, ""))
    fed: dict[str, Any] = {"rounds": int(rounds), "aggregator": aggregator}
    if aggregator == "fedprox":
        fed["fedprox_mu"] = persisted(
            st.number_input, "FedProx strength μ", "fedprox_mu",
            base.federation.fedprox_mu or 0.01, min_value=0.0, max_value=10.0, step=0.01,
            format="%.3f", help="How strongly each hospital is kept close to the shared model.")
    views = base.federation.server_view_rounds
    if isinstance(views, list):
        # A preset may record the server's view at fixed rounds; keep those that still exist.
        fed["server_view_rounds"] = [r for r in views if r <= rounds] or "last"
    secagg = persisted(st.toggle, "Secure aggregation", "secagg",
                       base.defenses.secure_aggregation,
                       help="Hospitals mask their updates so the server only learns their sum, "
                            "never one hospital's update.")
    dp_on = persisted(st.toggle, "Differential privacy", "dp", base.defenses.dp.enabled,
                      help="Random noise with a provable bound (ε) on how much the model and "
                           "its updates can reveal. Lower ε = more private and a less "
                           "accurate model; above ε 10 the bound means little.")
    dp: dict[str, Any] = {"enabled": dp_on}
    if dp_on:
        left, mid, right = st.columns(3)
        dp["level"] = persisted(
            left.radio, "What it protects", "dp_level", base.defenses.dp.level,
            options=["client", "sample"],
            format_func={"client": "a whole hospital", "sample": "each patient"}.get,
            help="A whole hospital: each hospital clips and noises its update. Each patient: "
                 "each hospital trains with DP-SGD, bounding every patient's influence.")
        dp["target_epsilon"] = persisted(
            mid.number_input, "Privacy budget ε", "dp_epsilon",
            base.defenses.dp.target_epsilon or 8.0, min_value=0.1, max_value=1e6, step=1.0,
            format="%.1f", help="The ε reached after the last round; the noise is chosen to "
                                "match it (Opacus RDP accountant, δ = 1e-5).")
        dp["noise_multiplier"] = 0.0
        dp["clip_norm"] = persisted(
            right.number_input, "Size limit (clip norm)", "dp_clip",
            base.defenses.dp.clip_norm, min_value=0.001, max_value=1e4, step=0.5,
            format="%.3f", help="The largest update (or patient gradient) that counts.")
    fed["runtime"] = persisted(st.selectbox, "Where the federation runs", "runtime",
                               base.federation.runtime, options=list(RUNTIMES),
                               format_func=RUNTIMES.get,
                               help="The same training, aggregation and attacks on every "
                                    "runtime; Flower is the engine for real deployments.")
    return {"data": {"centers": int(centers)}, "federation": fed,
            "defenses": {"secure_aggregation": secagg, "dp": dp}}


def _settings() -> tuple[ExperimentConfig | None, str]:
    """Preset + optional custom settings → a validated config, or None with the error shown."""
    names = preset_names()
    preset = persisted(st.selectbox, "Experiment", "preset", "smoke" if "smoke" in names
                       else names[0], options=names, on_change=_preset_changed)
    st.caption(preset_description(preset))
    customise = persisted(st.toggle, "Customise these settings", "custom", False)
    try:
        overrides = _custom_overrides(build_config(preset)) if customise else None
        cfg = build_config(preset, overrides=overrides)
    except ConfigError as err:
        lines = [ln.strip() for ln in str(err).removeprefix("invalid experiment config:")
                 .splitlines() if ln.strip()]
        st.error("**These settings can't be used:**\n\n" + "\n".join(f"- {ln}" for ln in lines))
        return None, preset
    st.caption(f"Will run: {describe_config(cfg)}.")
    return cfg, preset


def _start_help(cfg: ExperimentConfig | None, active: bool) -> str:
    if active:
        return "One run at a time: wait for the current run or stop it."
    if cfg is None:
        return "Fix the settings first (see the red message)."
    return "Trains in the background: you may leave this page and come back."


def _earlier_runs(run_id: str | None) -> None:
    done = [r for r in RunIndex().list() if r["state"] == "done"]
    if not done:
        return
    ids = [r["run_id"] for r in done]
    labels = {r["run_id"]: run_label(r) for r in done}
    picked = st.selectbox("Open an earlier run", ids, index=ids.index(run_id) if run_id in ids
                          else None, format_func=lambda rid: labels.get(rid, rid),
                          placeholder="Choose a finished run…")
    if picked and picked != run_id:
        set_current_run(picked)
        st.rerun()


@st.fragment(run_every=1.0)
def _live(run_id: str, total_rounds: int) -> None:
    """Progress of an active run; reruns the whole page once when the run ends."""
    records = progress_bar(run_id, total_rounds)
    history = history_from_metrics(records)
    if history:
        st.plotly_chart(history_figure(history, total_rounds))
    else:
        st.caption("The chart starts once the untrained model has been measured (round 0).")


def _results(run: RunFolder) -> None:
    summary = run.summary()
    fed = (summary or {}).get("federation") or {}
    if not fed.get("final"):
        st.warning("This run finished but wrote no results; start it again.")
        return
    st.markdown("#### How good is the shared model?")
    st.caption(" · ".join(METRIC_HELP.values()))
    metric_cards(fed["history"], fed["final"])
    st.markdown("#### Per hospital")
    st.caption("Measured on each hospital's held-out patients, which were never used for "
               "training.")
    center_table(fed["per_center"], fed.get("unseen_center"))
    st.markdown("#### Learning curve")
    st.plotly_chart(history_figure(fed["history"], fed["rounds"]))
    st.markdown("#### Example images")
    sample_images(run.path / "artifacts" / "samples.npz", list(fed["per_center"]))


def _show_run(run: RunFolder, cfg: ExperimentConfig, status: dict[str, Any]) -> None:
    st.subheader(f"Run: {cfg.name or 'custom'}")
    st.caption(f"{describe_config(cfg)} · run id `{run.run_id}`")
    state = status.get("state")
    if state in ACTIVE:
        if st.button("Stop this run", icon=":material/stop_circle:", key="cancel"):
            with st.spinner("Stopping: the current hospital finishes its step first…"):
                cancel_job(run, grace_s=15)
            st.rerun()
        _live(run.run_id, cfg.federation.rounds)
    elif state == "done":
        _results(run)
    elif state == "failed":
        st.error(f"This run failed: {status.get('error') or 'unknown error'}\n\n"
                 "What to do: try again with the smoke preset; if it fails again, send the "
                 "technical log below to the lab's maintainers.")
        log = run.path / "log.txt"
        if log.is_file():
            with st.expander("Technical log"):
                st.code("\n".join(log.read_text().splitlines()[-40:]), language=None)
    else:
        st.info("This run was stopped before it finished. Start a new one above.")


st.title("Federation")
st.caption("Simulated hospitals train one shared MRI → synthetic-CT model without sharing "
           "their images. Pick an experiment, start it, and watch the model learn.")

run_id = current_run_id()
run: RunFolder | None = None
run_cfg: ExperimentConfig | None = None
if run_id:
    try:
        run = open_run(run_id)
        run_cfg = run.config()
    except (FileNotFoundError, OSError, ConfigError):
        st.warning(f"Run `{run_id}` can't be opened (deleted or damaged); showing none.")
        set_current_run(None)
        run = None
status = run.status() if run else {}
active = status.get("state") in ACTIVE

with st.container(border=True):
    cfg, preset = _settings()
    start = st.button("Start training", type="primary", key="start",
                      disabled=cfg is None or active,
                      help=_start_help(cfg, active))
if start and cfg is not None and not active:
    set_current_run(start_job(cfg, preset=preset).run_id)
    st.rerun()

_earlier_runs(run.run_id if run else None)

if run and run_cfg:
    _show_run(run, run_cfg, status)
