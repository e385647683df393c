"""Runs: every experiment in the runs folder — list, open, delete and compare two."""

from __future__ import annotations

import streamlit as st

from app.params import RUNS_FIRST, RUNS_OPEN, RUNS_SECOND
from app.state import remember, session_owner
from app.views.common import STATE_TEXT, describe_config
from app.views.results import RunRow, list_runs
from app.views.runs import (
    COMPARE_CAPTION,
    compare_frame,
    curves_figure,
    design_warning,
    detail_links,
    filter_runs,
    runs_frame,
)
from app.widgets import metric_cards, queued_behind, run_picker, sample_images
from engine.core.config import ConfigError
from engine.core.run_folder import ACTIVE, STATES
from engine.orchestration.jobs import resume_job
from engine.orchestration.store import RESUMABLE, delete_run, open_run


def _summary(row: RunRow) -> None:
    try:
        st.caption(f"{describe_config(open_run(row.run_id).config())} · run id `{row.run_id}`")
    except (FileNotFoundError, OSError, ValueError, ConfigError):
        st.warning(f"The settings file `config.yaml` of run `{row.run_id}` can't be read "
                   "(missing or damaged).")
    if row.final:
        metric_cards(row.final, None, "")
    elif row.state == "done":
        st.warning(f"Run `{row.run_id}` finished but its results file `summary.json` is "
                   "missing or damaged.")
    else:
        st.info(f"This run is {STATE_TEXT.get(row.state, row.state)}; results appear when done.")
    if row.state in RESUMABLE:
        _resume(row)
    st.markdown("**See it in detail:**")
    for page, label, params in detail_links(row):
        st.page_link(str(page), label=label, query_params=params,
                     icon=":material/open_in_new:")


def _resume(row: RunRow) -> None:
    """Resume a run that ended without finishing, from its last checkpoint."""
    error = row.run.status().error
    st.warning(f"This run is {STATE_TEXT.get(row.state, row.state)}"
               + (f": {error}." if error else "."))
    behind = queued_behind()
    if st.button("Resume from the last checkpoint", icon=":material/resume:", key="resume",
                 help=(f"Queued behind {behind}. " if behind else "")
                 + "Training goes on from the last round it saved and ends as an "
                   "uninterrupted run would have."):
        try:
            resume_job(row.run, owner=session_owner())
        except (ValueError, ConfigError, FileNotFoundError) as err:
            st.error(f"This run can't be resumed: {err}")
            return
        st.toast(f"Resuming run `{row.run_id}` in the background.")
        st.rerun()


def _delete(row: RunRow) -> None:
    with st.expander("Delete this run"):
        if row.state in ACTIVE:
            st.error(f"This run is {STATE_TEXT.get(row.state, row.state)}, so it can't be "
                     "deleted. Stop it on the page that started it first.")
            return
        sure = st.checkbox("I understand this deletes the run folder", key="confirm_delete",
                           help=f"Removes `{row.path}` and everything in it for good.")
        if st.button("Delete run", type="primary", icon=":material/delete:", key="delete",
                     disabled=not sure) and sure:
            try:
                delete_run(row.run_id)
            except (FileNotFoundError, RuntimeError, OSError) as err:
                st.error(f"The run could not be deleted: {err}")
                return
            remember(RUNS_OPEN, None)
            st.session_state.pop("confirm_delete", None)
            st.toast(f"Deleted run `{row.run_id}`.")
            st.rerun()


def _compare(rows: list[RunRow]) -> None:
    done = [r for r in rows if r.final]
    if len(done) < 2:
        st.caption("Comparing needs two finished runs with readable results.")
        return
    left, right = st.columns(2)
    a = run_picker(done, RUNS_FIRST, "First run", column=left, default=done[1].run_id,
                   help="The run to compare from.")
    b = run_picker(done, RUNS_SECOND, "Second run", column=right, default=done[0].run_id,
                   help="The run to compare with it.")
    if not (a and b):
        return
    if warning := design_warning(a, b):
        st.warning(warning)
    # A plain table: a few rows to read side by side, selectable and searchable as text.
    st.table(compare_frame(a, b).set_index("Measure"))
    st.caption(COMPARE_CAPTION)
    st.plotly_chart(curves_figure(a, b))
    for tag, row in (("First run", a), ("Second run", b)):
        st.markdown(f"#### {tag}: {row.name or 'run'} · example images")
        sample_images(row.path / "artifacts" / "samples.npz",
                      list(row.federation.per_center) if row.federation else [])


def _list(runs: list[RunRow]) -> list[RunRow]:
    """The filters and the table; the runs they leave."""
    for run in runs:
        for problem in run.problems:
            st.warning(f"Damaged run: {problem}. It is listed, but its results can't be shown.")
    left, right = st.columns([2, 3])
    states = left.multiselect("State", list(STATES), format_func=lambda s: STATE_TEXT.get(s, s),
                              key="state_filter", placeholder="All states")
    text = right.text_input("Name contains", key="name_filter", placeholder="e.g. smoke")
    shown = filter_runs(runs, states, text)
    st.dataframe(runs_frame(shown), hide_index=True, key="runs_table",
                 column_config={"Final MAE (HU)": st.column_config.NumberColumn(format="%.0f")})
    if not shown:
        st.info("No run matches these filters.")
    return shown


def main() -> None:
    st.title("Runs")
    st.caption("Every experiment kept in the runs folder: find one, open it, delete it, or put "
               "two side by side.")
    runs = list_runs()
    if not runs:
        st.info("No runs yet. Start one on the Federation page.")
        return
    shown = _list(runs)
    st.subheader("Open a run")
    opened = run_picker(shown or runs, RUNS_OPEN, "Run", optional=True,
                        help="A run to open: its results, links to its pages, resume or "
                             "delete.")
    if opened:
        _summary(opened)
        _delete(opened)
    st.subheader("Compare two runs")
    _compare(runs)


main()
