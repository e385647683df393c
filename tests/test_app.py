"""The Streamlit dashboard, driven headless with AppTest against the real engine.

A started run trains in a detached subprocess (as in production); AppTest does not tick
``run_every`` fragments, so the test waits on the run folder and then reruns the page.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.core.run_folder import ACTIVE
from engine.orchestration.jobs import start_job
from engine.orchestration.presets import build_config, preset_title
from engine.orchestration.store import RunIndex, create_run, open_run

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
# switch_page paths are relative to the entrypoint's folder (app/); pages/ is its sibling.
FEDERATION = "../pages/federation.py"
HOME = "../pages/home.py"


@pytest.fixture(autouse=True)
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(root))
    return root


def _app(run_id: str | None = None) -> AppTest:
    # The first run imports plotly/pandas/engine: well over AppTest's 3 s default.
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    if run_id:
        at.query_params["run"] = run_id
    return at


def _federation(run_id: str | None = None) -> AppTest:
    at = _app(run_id).run()
    at.switch_page(FEDERATION).run()
    assert not at.exception, at.exception
    return at


def test_home_renders() -> None:
    at = _app().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "FedSCT Security Lab"
    assert any("No runs yet" in c.value for c in at.caption)
    assert any("Runs folder" in c.value for c in at.sidebar.caption)


def test_home_lists_runs_and_a_row_opens_one() -> None:
    run = create_run(build_config("smoke"))
    run.set_status("failed", error="RuntimeError: boom")
    at = _app().run()
    assert at.dataframe[0].value["Run id"].tolist() == [run.run_id]
    # What a click on the row sends (AppTest has no dataframe-selection helper).
    at.session_state["latest_runs"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Federation"
    assert at.query_params["run"] == run.run_id
    assert any("boom" in e.value for e in at.error)
    at.switch_page(HOME).run()  # the old selection must not bounce the user away again
    assert at.title[0].value == "FedSCT Security Lab"


def test_federation_page_has_settings_and_start() -> None:
    at = _federation()
    preset = at.selectbox(key="w_preset")
    assert {f"{preset_title(p)} ({p})" for p in ("smoke", "demo", "paper")} <= set(preset.options)
    assert at.button(key="start").label == "Start training"
    assert not at.button(key="start").disabled


def test_settings_survive_a_page_switch() -> None:
    at = _federation()
    at.selectbox(key="w_preset").select("demo").run()
    at.switch_page(HOME).run()
    at.switch_page(FEDERATION).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="w_preset").value == "demo"


def test_refused_config_explains_and_starts_nothing() -> None:
    at = _federation()
    at.toggle(key="w_custom").set_value(True).run()
    # Rules by their names, not their config keys.
    assert at.selectbox(key="w_aggregator").options[:3] == ["FedAvg", "FedProx", "FedMedian"]
    at.selectbox(key="w_aggregator").select("fedmedian").run()
    at.toggle(key="w_secagg").set_value(True).run()
    assert any("secure aggregation" in e.value for e in at.error)
    assert at.button(key="start").disabled  # AppTest, like a browser, can't click it
    assert "run" not in at.query_params
    assert RunIndex().list() == []


def test_failed_cancelled_and_missing_runs_are_explained() -> None:
    cfg = build_config("smoke")
    failed, cancelled = create_run(cfg), create_run(cfg)
    failed.set_status("failed", error="RuntimeError: out of memory")
    cancelled.set_status("cancelled")

    at = _federation(failed.run_id)
    assert any("out of memory" in e.value for e in at.error)
    at = _federation(cancelled.run_id)
    assert any("stopped" in i.value for i in at.info)
    at = _federation("no-such-run")
    assert any("can't be opened" in w.value for w in at.warning)


def test_smoke_run_from_start_button_to_results() -> None:
    at = _federation()
    at.selectbox(key="w_preset").select("smoke").run()
    at.toggle(key="w_custom").set_value(True).run()
    at.number_input(key="w_rounds").set_value(1).run()  # one round keeps the test short
    at.number_input(key="w_seed").set_value(7).run()
    at.button(key="start").click().run()
    assert not at.exception, at.exception

    run_id = at.query_params["run"]
    assert open_run(run_id).config().seed == 7  # the seed is a setting like any other
    assert at.button(key="cancel")  # offered while the run is active
    assert at.get("progress")
    run = open_run(run_id)
    deadline = time.monotonic() + 120
    while run.status().state in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.status().state == "done", run.status()

    # A browser reload: a new session that only has the URL.
    at = _federation(run_id)
    assert [m.label for m in at.metric] == [
        "Average error (MAE)", "Image quality (PSNR)", "Structural similarity (SSIM)"]
    final = run.summary()["federation"]["final"]
    assert at.metric[0].value == f"{final['mae_hu']:.0f} HU"
    assert at.get("plotly_chart")
    assert len(at.get("image")) == 4 * 3  # MRI | CT | sCT | error for each of 3 hospitals
    assert at.selectbox[-1].value == run_id  # listed among earlier runs, selected


def test_live_progress_then_stop() -> None:
    at = _federation()
    at.button(key="start").click().run()  # smoke preset, several rounds
    run = open_run(at.query_params["run"])
    deadline = time.monotonic() + 60
    while not run.metrics() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert run.metrics(), run.status()

    at.run()  # what the 1 s fragment tick would show
    assert not at.exception, at.exception
    assert at.get("plotly_chart")  # live chart from round 0 on
    assert "Round" in at.get("progress")[0].proto.text

    at.button(key="cancel").click().run()
    assert not at.exception, at.exception
    assert run.status().state == "cancelled"
    assert any("stopped" in i.value for i in at.info)


def test_unseen_hospital_is_labelled() -> None:
    # The demo's layout (an unseen hospital) at the smallest size: this test is about labels.
    cfg = build_config("demo", overrides={
        "federation": {"rounds": 1, "local_epochs": 1},
        "data": {"patients_per_center": 1, "slices_per_patient": 4, "image_size": 32},
    })
    run = start_job(cfg, preset="demo")
    deadline = time.monotonic() + 120
    while run.status().state in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.status().state == "done", run.status()

    at = _federation(run.run_id)
    hospitals = at.dataframe[0].value["Hospital"].tolist()
    assert hospitals[-1] == "unseen hospital (never trained)"
    assert len(at.get("image")) == 4 * len(hospitals)
    assert any(m.value.startswith("**unseen hospital (never trained)") for m in at.markdown)


def test_an_error_inside_a_page_is_a_sentence_not_a_traceback(runs_dir, monkeypatch):

    def broken(self, *args, **kwargs):
        raise RuntimeError("index unreadable")

    monkeypatch.setattr(RunIndex, "list", broken)
    at = _app().run()
    assert not at.exception
    assert any("Something went wrong on this page" in e.value and "index unreadable" in e.value
               for e in at.error)
    assert "index unreadable" in (runs_dir / "dashboard-errors.log").read_text()


@pytest.mark.parametrize("page", ["federation", "membership"])
def test_a_crafted_run_link_is_shown_as_text(page: str) -> None:
    """A ?run= value is text: no link, image or colour can be slipped into the page."""
    evil = "x` [Sign in again](https://evil.example) ![i](https://evil.example/a.png) `"
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.query_params["run" if page == "federation" else "mia_run"] = evil
    at.run()
    at.switch_page(FEDERATION if page == "federation" else "../pages/membership.py").run()
    assert not at.exception, at.exception
    shown = [w.value for w in at.warning if "can't be opened" in w.value]
    assert shown and all("](" not in w and "`" not in w.replace("\\`", "") for w in shown)
    assert "\\[Sign in again\\]" in shown[0]


def test_a_full_queue_is_one_line_on_the_start_button(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.orchestration import queue

    monkeypatch.setattr(queue, "MAX_WAITING", 0)
    at = _federation()
    at.button(key="start").click().run()
    assert not at.exception, at.exception
    assert any("This run can't be started:" in e.value and "waiting in the queue already"
               in e.value for e in at.error)
    assert "run" not in at.query_params and RunIndex().list() == []


def test_the_start_button_counts_the_job_for_this_browser_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The page passes its session to the queue: at the per-session cap its Start refuses."""
    from engine.orchestration import queue

    monkeypatch.setattr(queue, "MAX_WAITING_PER_SESSION", 0)
    at = _federation()
    at.button(key="start").click().run()
    assert not at.exception, at.exception
    assert any("per browser session" in e.value for e in at.error)
    assert RunIndex().list() == []
