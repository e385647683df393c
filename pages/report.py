"""Report: one run as a single HTML file to keep or share, plus its raw results; and the
whole study (``fedsct study``) in one table beside the study's published figures."""

from __future__ import annotations

import streamlit as st

from app.params import REPORT_RUN
from app.state import session_owner
from app.views.report import SCALE_WORDS, make_report, metrics_csv, study_cell_words
from app.views.results import list_runs, read_sweep_folder
from app.widgets import run_picker, study_box
from engine.orchestration.jobs import start_study_job
from engine.orchestration.study import study_folder
from engine.orchestration.study_catalogue import STUDY_SCALES, study_cells


def _run_report() -> None:
    rows = [r for r in list_runs() if r.state == "done"]
    if not rows:
        st.info("No finished run yet: train one on the Federation page.")
        return
    row = run_picker(rows, REPORT_RUN, "Run", help="A finished run, newest first.")
    assert row is not None

    report = make_report(row.path)
    for problem in report.problems:
        st.warning(f"Run `{row.run_id}`: {problem}. The report says so in its place.")
    st.markdown("**In this report:** settings and versions · synthetic-CT quality"
                + "".join(f" · {a}" for a in report.attacks))

    cols = st.columns(3)
    cols[0].download_button("Report (HTML)", report.html,
                            file_name=f"report-{row.run_id}.html", mime="text/html",
                            icon=":material/description:", key="dl_report")
    summary = row.path / "summary.json"
    if summary.is_file():
        cols[1].download_button("Results (summary.json)", summary.read_bytes(),
                                file_name=f"summary-{row.run_id}.json",
                                mime="application/json", icon=":material/data_object:",
                                key="dl_summary")
    cols[2].download_button("Metrics per round (CSV)", metrics_csv(row.path),
                            file_name=f"metrics-{row.run_id}.csv", mime="text/csv",
                            icon=":material/table:", key="dl_metrics")


def _study() -> None:
    st.header("The whole study in one report")
    st.caption("Every analysis of the FedSynthCT-Brain security study — synthetic-CT quality, "
               "membership inference with and without secure aggregation, the study's DLG "
               "and the strongest inversion attack, high- and low-noise poisoning under each "
               "rule, and beyond it the backdoor against each defense — run one after the "
               "other, then one table puts each result beside the study's published figure, "
               "with the sample and interval it rests on.")
    scale = st.radio("Scale", list(STUDY_SCALES), horizontal=True, key="study_scale",
                     format_func=lambda x: SCALE_WORDS[x],
                     help="demo: minutes on this machine; paper: the presets as they are; "
                          "full: the study's 256 px images, meant for a GPU.")
    folder = study_folder(scale)
    sweep = read_sweep_folder(folder, f"study-{scale}", len(study_cells(scale)))
    study_box(sweep, study_cell_words,
              start=lambda: start_study_job(scale, owner=session_owner()),
              command=f"fedsct study --scale {scale}")
    report = folder / "report.md"
    if report.is_file():
        st.markdown(report.read_text())
        html_file = folder / "report.html"
        if html_file.is_file():
            st.download_button("Study report (HTML)", html_file.read_bytes(),
                               file_name=f"study-{scale}.html", mime="text/html",
                               icon=":material/description:", key="dl_study")


def main() -> None:
    st.title("Report")
    st.caption("One self-contained file per run: settings, software versions, synthetic-CT "
               "quality with its learning curve, and every attack that ran with its verdict, "
               "tables and images. It opens in any browser, offline.")
    _run_report()
    _study()


main()
