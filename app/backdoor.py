"""Streamlit widgets of the Poisoning page's backdoor section: start a backdoor run, pick one,
and show its verdict, one triggered slice, its success round by round and the per-hospital
table; the backdoor studies. Words and figures are in
``app.views.backdoor``."""

from __future__ import annotations

import streamlit as st

from app.params import BACKDOOR_RUN
from app.views import backdoor as views
from app.views.results import RunRow
from app.widgets import attack_run, number_table, preset_jobs, study_section, verdict_box


def backdoor_section(rows: list[RunRow]) -> None:
    st.markdown("### Backdoor: a synthetic CT that lies only under a trigger")
    st.markdown(views.INTRO)
    preset_jobs(BACKDOOR_RUN, views.PRESETS, kind="backdoor", retry="backdoor-demo",
                intro="**Plant a backdoor** (in the background: you may leave this page and "
                      "come back; the time each takes is under its button)",
                note="After the last round the same federation is trained without the "
                     "attacker (and, against a defense, the attack against FedAvg), then "
                     "every held-out slice is scored with and without the trigger.")
    run = attack_run(views.backdoor_runs(rows), BACKDOOR_RUN, "Backdoor run", what="backdoor",
                     empty=views.EMPTY, help="The verdict, image and table describe this run.")
    if run is not None:
        _run(run)
    backdoor_study()


def _run(run: views.BackdoorRun) -> None:
    box = verdict_box(views.verdict(run))
    if (png := run.example()) is not None:
        box.image(str(png), caption=views.EXAMPLE_CAPTION)
    if (fig := views.rounds_figure(run.backdoor, run.defense)) is not None:
        st.plotly_chart(fig)
        st.caption(views.ROUNDS_CAPTION)
    number_table(*views.hospital_table(run.backdoor))


def backdoor_study() -> None:
    """The backdoor studies: start or follow each, then one line per attack × defense."""
    for name, title in views.STUDIES:
        sweep = study_section(name, title, views.cell_words)
        if sweep is not None and sweep.rows:
            st.dataframe(views.study_table(sweep.rows), hide_index=True)
            st.plotly_chart(views.study_figure(sweep.rows), key=f"figure_{name}")
            st.caption(views.STUDY_CAPTION)
    st.caption(views.SECAGG_NOTE)
