"""Home: what the lab is, the threat model in plain words, and the latest runs."""

from __future__ import annotations

import streamlit as st

from app.views.common import PAGES_DIR, runs_table
from app.views.report import scorecards
from app.views.results import list_runs
from app.widgets import render_scorecards, run_picker
from engine.orchestration.store import RunIndex

st.title("FedSCT Security Lab")
st.markdown(
    "Several hospitals want a shared AI model that turns a brain **MRI** into a **synthetic "
    "CT** (sCT), so patients can skip the CT scan for radiotherapy planning. With *federated "
    "learning* no hospital sends its images anywhere: each one trains the model on its own "
    "patients and only sends the model's **updates** to a central server, which combines them. "
    "This lab simulates such a federation on artificial patients so you can see how good the "
    "shared model gets and what the protections cost.\n\n"
    "**What can go wrong (the threat model).** A curious server could study a hospital's "
    "updates to guess whether a given patient was used, or even rebuild their images; a "
    "dishonest hospital could send harmful updates to spoil the shared model. The defenses "
    "here — secure aggregation (the server only sees the sum of updates), privacy noise "
    "(differential privacy) and robust aggregation rules — each block some of these attacks."
)
st.page_link(str(PAGES_DIR / "federation.py"), label="Train a federation",
             icon=":material/arrow_forward:")

rows = list_runs()
st.subheader("Scorecards of one run")
done = [r for r in rows if r.state == "done" and r.summary is not None]
if not done:
    st.caption("No finished run yet: start one on the Federation page (the three live demos "
               "there take a minute or two each), or an attack from the cards below.")
    render_scorecards(scorecards(None), PAGES_DIR)
else:
    row = run_picker(done, "home_run", "Run", help="The scorecards describe this one run: "
                     "its model and the attacks it ran. Newest first.")
    assert row is not None
    st.caption("Traffic lights of this run: green = shown to be safe or good, orange = watch, "
               "red = concern, grey = not measured here or inconclusive.")
    render_scorecards(scorecards(row.summary), PAGES_DIR)

st.subheader("Latest runs")
runs = RunIndex().list()[:10]
if not runs:
    st.caption("No runs yet: start one on the Federation page.")
else:
    table = runs_table(runs)
    picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                          key="latest_runs",
                          column_config={"Final MAE (HU)": st.column_config.NumberColumn(
                              format="%.0f")})
    st.caption("Select a row to open that run on the Federation page.")
    if picked.selection.rows:
        run_id = table["Run id"].iloc[picked.selection.rows[0]]
        st.switch_page(str(PAGES_DIR / "federation.py"), query_params={"run": run_id})
