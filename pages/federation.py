"""Federation: choose settings, train in the background, watch progress, read the results."""

from __future__ import annotations

import streamlit as st

from app.federation import custom_overrides, show_run
from app.state import (
    changed,
    current_run_id,
    forget,
    persisted,
    session_owner,
    set_current_run,
    set_setting,
)
from app.views.common import describe_config, plain
from app.views.results import RunRow, list_runs
from app.widgets import queued_behind, run_picker
from engine.core.config import ConfigError, ExperimentConfig
from engine.core.run_folder import RunFolder
from engine.orchestration.jobs import start_job
from engine.orchestration.presets import (
    build_config,
    preset_description,
    preset_names,
    preset_title,
)
from engine.orchestration.store import open_run

CUSTOM = ("centers", "rounds", "aggregator", "fedprox_mu", "secagg", "dp", "dp_level",
          "dp_epsilon", "dp_clip", "runtime", "seed")


def _preset_changed() -> None:
    # Custom values were seeded from the old preset; reseed them from the new one.
    forget(*CUSTOM)


def _settings(run_preset: str | None) -> tuple[ExperimentConfig | None, str]:
    """Preset + optional custom settings → a validated config, or None with the error shown.
    A run opened by a link selects its own preset."""
    names = preset_names()
    if run_preset in names and changed("linked_preset", run_preset):
        # A deep link (?run=) or a picked run: show the settings that produced it.
        forget(*CUSTOM)
        set_setting("preset", run_preset)
    preset = persisted(st.selectbox, "Experiment", "preset", "smoke" if "smoke" in names
                       else names[0], options=names, on_change=_preset_changed,
                       format_func=lambda n: f"{preset_title(n)} ({n})")
    st.caption(preset_description(preset))
    customise = persisted(st.toggle, "Customise these settings", "custom", False)
    try:
        overrides = custom_overrides(build_config(preset)) if customise else None
        cfg = build_config(preset, overrides=overrides)
    except ConfigError as err:
        lines = [ln.strip() for ln in str(err).removeprefix("invalid experiment config:")
                 .splitlines() if ln.strip()]
        st.error("**These settings can't be used:**\n\n" + "\n".join(f"- {ln}" for ln in lines))
        return None, preset
    st.caption(f"Will run: {describe_config(cfg)}.")
    return cfg, preset


def _earlier_runs(rows: list[RunRow]) -> None:
    done = [r for r in rows if r.state == "done"]
    if done:
        run_picker(done, "run", "Open an earlier run", optional=True,
                   help="A finished run: its results, its attacks and their verdicts.")


def _open_current() -> tuple[RunFolder | None, ExperimentConfig | None]:
    """The run in the URL and its config; one that can't be opened is forgotten."""
    run_id = current_run_id()
    if not run_id:
        return None, None
    try:
        run = open_run(run_id)
        return run, run.config()
    except (FileNotFoundError, OSError, ConfigError):
        st.warning(f"Run {plain(run_id)} can't be opened (deleted or damaged); showing none.")
        set_current_run(None)
        return None, None


def main() -> None:
    st.title("Federation")
    st.caption("Simulated hospitals train one shared MRI → synthetic-CT model without sharing "
               "their images. Pick an experiment, start it, and watch the model learn.")
    rows = list_runs()
    run, run_cfg = _open_current()
    status = run.status() if run else None
    with st.container(border=True):
        cfg, preset = _settings(status.preset if status else None)
        behind = queued_behind(run.path if run else None)
        # Not the primary (red) button while a job runs: pressing it queues a second one.
        start = st.button("Queue training" if behind else "Start training",
                          type="secondary" if behind else "primary",
                          key="start", disabled=cfg is None,
                          help="Fix the settings first (see the red message)." if cfg is None
                          else f"Queued behind {behind}: it starts when that job ends."
                          if behind else "Trains in the background: you may leave this page "
                          "and come back.")
    if start and cfg is not None:
        try:
            set_current_run(start_job(cfg, preset=preset, owner=session_owner()).run_id)
        except ConfigError as err:  # more than this machine can hold
            st.error(f"**This run can't be started:** {err}.")
        else:
            st.rerun()
    _earlier_runs(rows)
    if run and run_cfg and status:
        show_run(run, run_cfg, status, next((r for r in rows if r.run_id == run.run_id),
                                             None))


main()
