"""Home: what the lab is, the threat model in plain words, and the latest runs."""

from __future__ import annotations

import streamlit as st

from app.params import FEDERATION_RUN, HOME_RUN
from app.views.common import PAGES_DIR, runs_table
from app.views.report import HOME_INTRO, scorecards
from app.views.results import RunRow, list_runs
from app.widgets import render_scorecards, run_picker
from engine.orchestration.store import RunIndex


def _scorecards(rows: list[RunRow]) -> None:
    st.subheader("Scorecards of one run")
    done = [r for r in rows if r.state == "done" and r.summary is not None]
    if not done:
        st.caption("No finished run yet: start one on the Federation page (the three live "
                   "demos there take a minute or two each), or an attack from the cards below.")
        render_scorecards(scorecards(None), PAGES_DIR)
        return
    row = run_picker(done, HOME_RUN, "Run", help="The scorecards describe this one run: "
                     "its model and the attacks it ran. Newest first.")
    assert row is not None
    st.caption("Traffic lights of this run: green = shown to be safe or good, orange = watch, "
               "red = concern, grey = not measured here or inconclusive.")
    render_scorecards(scorecards(row.summary), PAGES_DIR)


def _latest() -> None:
    st.subheader("Latest runs")
    runs = RunIndex().list()[:10]
    if not runs:
        st.caption("No runs yet: start one on the Federation page.")
        return
    table = runs_table(runs)
    picked = st.dataframe(table, hide_index=True, on_select="rerun",
                          selection_mode="single-row", key="latest_runs",
                          column_config={"Final MAE (HU)": st.column_config.NumberColumn(
                              format="%.0f")})
    st.caption("Select a row to open that run on the Federation page.")
    if picked.selection.rows:
        run_id = table["Run id"].iloc[picked.selection.rows[0]]
        st.switch_page(str(PAGES_DIR / "federation.py"), query_params={FEDERATION_RUN: run_id})


def main() -> None:
    st.title("FedSCT Security Lab")
    st.markdown(HOME_INTRO)
    st.page_link(str(PAGES_DIR / "federation.py"), label="Train a federation",
                 icon=":material/arrow_forward:")
    _scorecards(list_runs())
    _latest()


main()
