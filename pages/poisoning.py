"""Poisoning: what can a malicious hospital do to the shared model, and which rule stops it?"""

from __future__ import annotations

import streamlit as st

from app.backdoor import backdoor_section
from app.params import POISONING_RUN
from app.poisoning import (
    attack_controls,
    attack_curves,
    breakdown_study,
    detection_section,
    other_studies,
    paper_study,
    rule_verdicts,
)
from app.state import persisted, remember, session_owner
from app.views.common import STATE_TEXT
from app.views.poisoning import (
    BASE_PRESET,
    EMPTY,
    INTRO,
    METRICS,
    PAPER_TEXT,
    attack_time_text,
    base_hospitals,
    poisoning_runs,
    rule_name,
)
from app.views.poisoning_studies import cell_words
from app.views.results import list_runs, read_sweep
from app.widgets import (
    attack_run,
    job_progress,
    queued_behind,
    refusal_shown,
    remembered_run,
    study_box,
)
from engine.orchestration.jobs import cancel_job, start_job
from engine.orchestration.store import find_finished_run, runs_root

FLASH = "poi_flash"


# --------------------------------------------------------------------------- jobs


def _jobs() -> None:
    """The attack controls, the Run button (one run per rule, through the job queue) and the
    progress of the run started here."""
    job, cfg, status = remembered_run(POISONING_RUN, "the newest poisoning run instead")
    active = status is not None and status.active
    with st.container(border=True):
        st.markdown(f"**Attack the federation** ({base_hospitals()} hospitals, in the "
                    "background: you may leave this page and come back)")
        plans, ok = attack_controls()
        st.caption(attack_time_text([cfg for _, cfg in plans]))
        found = {rule: find_finished_run(cfg, runs_root()) for rule, cfg in plans}
        reused = [f"{rule_name(r)} (`{f.run_id}`)" for r, f in found.items() if f]
        if reused:
            st.caption("Finished runs with exactly these settings exist for "
                       + ", ".join(reused) + ": Run shows them instead of training again.")
        behind = queued_behind()
        if st.button("Run", key="poi_start", type="primary", icon=":material/play_arrow:",
                     disabled=not ok,
                     help=f"Queued behind {behind}: it starts when that job ends." if behind
                     else "One run per rule, one after the other, in the job queue."):
            todo = [(r, cfg) for r, cfg in plans if found[r] is None]
            started = []
            with refusal_shown("The attack"):
                for _, cfg in todo:
                    started.append(start_job(cfg, preset=BASE_PRESET, owner=session_owner()))
            if len(started) < len(todo):  # refused, said above; the banner shows any started
                return
            remember(POISONING_RUN, started[0].run_id if started else found[plans[0][0]].run_id)
            st.session_state[FLASH] = (
                "Showing the finished runs with these settings; nothing had to be trained."
                if not started else
                f"Queued the attack under {', '.join(rule_name(r) for r, _ in todo)}: the runs "
                "go one after the other" + (f", after {behind}" if behind else "")
                + "; the banner at the top shows their progress.")
            st.rerun()
        if job and cfg and status and active:
            st.markdown(f"The attack under **{rule_name(cfg.federation.aggregator)}** (run id "
                        f"`{job.run_id}`) is {STATE_TEXT[status.state]}; its results appear "
                        "below when it finishes.")
            job_progress(job.run_id, cfg.federation.rounds)
            st.caption("After the last round the same federation is trained again without "
                       "attackers (or a finished clean run is reused), for comparison.")
            if st.button("Stop this run", icon=":material/stop_circle:", key="poi_cancel"):
                with st.spinner("Stopping: the current hospital finishes its step first…"):
                    cancel_job(job, grace_s=15)
                st.rerun()
        elif status and status.state in ("failed", "interrupted"):
            st.error(f"The last attack run did not finish: "
                     f"{status.error or 'unknown error'}. The Runs page can resume it; "
                     "the Federation page shows its log.")


# --------------------------------------------------------------------------- page


def main() -> None:
    st.title("Poisoning")
    st.markdown(INTRO)
    paper = read_sweep("poison-paper")
    _jobs()
    with st.container(border=True):
        st.markdown(f"**The study grid** (`poison-paper`): {PAPER_TEXT}.")
        study_box(paper, cell_words)
    if flash := st.session_state.pop(FLASH, None):
        st.success(flash)
    metric = persisted(st.radio, "Quality measure in the charts", "poi_metric", "mae_hu",
                       options=list(METRICS), format_func=lambda m: METRICS[m],
                       horizontal=True)
    rows = list_runs()
    found = poisoning_runs(rows)
    runs = found[0]
    shown = attack_run(found, POISONING_RUN, "Poisoned run", what="poisoning", empty=EMPTY,
                       help="Finished runs with malicious hospitals, newest first.")
    if shown is not None:
        rule_verdicts(shown, runs)
        attack_curves(shown, runs, metric)
        detection_section(shown)
    paper_study(paper, metric)
    other_studies()
    breakdown_study()
    backdoor_section(rows)


main()
