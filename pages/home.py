"""Home: what the lab is, the threat model in plain words, and the latest runs."""

from __future__ import annotations

import streamlit as st

from app.report import render_scorecards, scorecards
from app.runs import list_runs
from app.ui import PAGES_DIR, runs_table
from engine.orchestration.store import RunIndex, runs_root

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

st.subheader("Scorecards")
st.caption("Traffic lights from the latest finished runs: green = good, orange = watch, "
           "red = concern.")
render_scorecards(scorecards(list_runs(runs_root())), PAGES_DIR)

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
