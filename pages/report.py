"""Report: one run as a single HTML file to keep or share, plus its raw results."""

from __future__ import annotations

import streamlit as st

from app.views.report import make_report, metrics_csv
from app.views.results import list_runs
from app.widgets import run_picker

PARAM = "report_run"

st.title("Report")
st.caption("One self-contained file per run: settings, software versions, synthetic-CT "
           "quality with its learning curve, and every attack that ran with its verdict, "
           "tables and images. It opens in any browser, offline.")

rows = [r for r in list_runs() if r.state == "done"]
if not rows:
    st.info("No finished run yet: train one on the Federation page.")
    st.stop()
row = run_picker(rows, PARAM, "Run", help="A finished run, newest first.")
assert row is not None

report = make_report(row.path)
for problem in report.problems:
    st.warning(f"Run `{row.run_id}`: {problem}. The report says so in its place.")
st.markdown("**In this report:** settings and versions · synthetic-CT quality"
            + "".join(f" · {a}" for a in report.attacks))

cols = st.columns(3)
cols[0].download_button("Report (HTML)", report.html, file_name=f"report-{row.run_id}.html",
                        mime="text/html", icon=":material/description:", key="dl_report")
summary = row.path / "summary.json"
if summary.is_file():
    cols[1].download_button("Results (summary.json)", summary.read_bytes(),
                            file_name=f"summary-{row.run_id}.json", mime="application/json",
                            icon=":material/data_object:", key="dl_summary")
cols[2].download_button("Metrics per round (CSV)", metrics_csv(row.path),
                        file_name=f"metrics-{row.run_id}.csv", mime="text/csv",
                        icon=":material/table:", key="dl_metrics")
