"""The Runs page, driven headless with AppTest on real run folders.

Two tiny finished runs are trained once per module with the engine's own ``execute``; each
test copies them into its private runs root (``runs_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.core.run_folder import RunFolder
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
RUNS = "../pages/runs.py"  # relative to the entrypoint's folder (app/)
TINY = ["data.centers=2", "data.patients_per_center=2", "data.slices_per_patient=4",
        "data.image_size=32", "model.channels=[8,16,32]", "model.num_res_units=1",
        "federation.local_epochs=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of two finished tiny smoke runs, 'alpha' (1 round) and 'beta' (2 rounds)."""
    root = tmp_path_factory.mktemp("runs-page")
    out = {}
    for name, rounds in (("alpha", 1), ("beta", 2)):
        cfg = build_config("smoke", sets=[f"federation.rounds={rounds}", f"name={name}", *TINY])
        run = create_run(cfg, root, preset="smoke")
        assert execute(run) is not None, run.status()
        out[name] = run.path
    return out


@pytest.fixture
def runs(trained: dict[str, Path], runs_dir: Path) -> dict[str, RunFolder]:
    """Copies of the trained runs in this test's runs root (the index is rebuilt on listing)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    return {name: RunFolder(Path(shutil.copytree(path, runs_dir / path.name)))
            for name, path in trained.items()}


def _page(**params: str) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    at.switch_page(RUNS).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Runs"
    return at


def _final(run: RunFolder) -> dict[str, float]:
    return run.summary()["federation"]["final"]


def _table(at: AppTest):
    return at.dataframe[0].value  # AppTest exposes no dataframe keys


def test_empty_runs_folder(runs_dir: Path) -> None:
    at = _page()
    assert any("No runs yet" in i.value for i in at.info)
    assert not at.dataframe


def test_lists_runs_with_mae_and_filters(runs: dict[str, RunFolder]) -> None:
    failed = create_run(build_config("smoke", sets=["name=gamma"]))
    failed.set_status("failed", error="RuntimeError: boom")
    at = _page()
    table = _table(at)
    # Newest first: the failed run was created last.
    assert table["Run id"].tolist() == [failed.run_id, runs["beta"].run_id, runs["alpha"].run_id]
    assert table["Name"].tolist() == ["gamma", "beta", "alpha"]
    assert table["State"].tolist() == ["failed", "finished", "finished"]
    mae = dict(zip(table["Name"], table["Final MAE (HU)"], strict=True))
    assert mae["alpha"] == pytest.approx(_final(runs["alpha"])["mae_hu"])
    assert mae["beta"] == pytest.approx(_final(runs["beta"])["mae_hu"])
    assert table["Attacks"].tolist() == ["", "", ""]

    at.text_input(key="name_filter").input("bet").run()
    assert _table(at)["Name"].tolist() == ["beta"]
    at.text_input(key="name_filter").input("").run()
    at.multiselect(key="state_filter").select("failed").run()
    assert _table(at)["Name"].tolist() == ["gamma"]
    at.text_input(key="name_filter").input("alpha").run()
    assert _table(at).empty
    assert any("No run matches" in i.value for i in at.info)


def test_open_shows_summary_and_detail_link(runs: dict[str, RunFolder]) -> None:
    run = runs["alpha"]
    at = _page(runs_open=run.run_id)
    assert next(b for b in at.selectbox if b.label == "Run").value == run.run_id
    assert at.metric[0].value == f"{_final(run)['mae_hu']:.0f} HU"
    assert at.metric[1].value == f"{_final(run)['psnr_db']:.2f} dB"
    assert any("1 rounds" in c.value and run.run_id in c.value for c in at.caption)
    links = at.get("page_link")
    assert [link.proto.query_string for link in links] == [f"run={run.run_id}"]
    assert links[0].proto.page == "federation"


def test_attacks_are_listed_and_linked(runs: dict[str, RunFolder]) -> None:
    run = runs["beta"]
    summary = run.summary() | {"inversion": {"method": "dlg"}, "mia": {"attack": "loss"}}
    run.write_summary(summary)
    at = _page(runs_open=run.run_id)
    attacks = dict(zip(_table(at)["Name"], _table(at)["Attacks"], strict=True))
    assert attacks == {"beta": "membership, inversion", "alpha": ""}
    assert [(link.proto.page, link.proto.query_string) for link in at.get("page_link")] == [
        ("federation", f"run={run.run_id}"), ("membership", f"mia_run={run.run_id}"),
        ("inversion", f"inv_run={run.run_id}")]


def test_compare_two_runs(runs: dict[str, RunFolder]) -> None:
    a, b = runs["alpha"], runs["beta"]
    at = _page(runs_a=a.run_id, runs_b=b.run_id)
    table = at.table[0].value.reset_index()
    fa, fb = _final(a), _final(b)
    rows = table.set_index("Measure")
    # First what makes them comparable: one rounds apart, so a warning says so.
    assert rows.loc["Design", "First run"].endswith("1 rounds · 32 px")
    assert rows.loc["Design", "Change (second − first)"] == "different"
    assert rows.loc["Defenses", "Change (second − first)"] == "same"
    assert any("different designs (2 hospitals × 2 patients · 1 rounds · 32 px against"
               in w.value for w in at.warning)
    mae = next(m for m in rows.index if m.startswith("Average error"))
    assert rows.loc[mae, "First run"] == f"{fa['mae_hu']:.0f}"
    assert rows.loc[mae, "Second run"] == f"{fb['mae_hu']:.0f}"
    assert rows.loc[mae, "Change (second − first)"] == f"{fb['mae_hu'] - fa['mae_hu']:+.0f}"
    ssim = next(m for m in rows.index if m.startswith("Structural similarity"))
    assert float(rows.loc[ssim, "Second run"]) == pytest.approx(fb["ssim"], abs=1e-3)
    # Below the metrics, every security result either run has, with its change.
    security = dict(zip(table["Measure"], zip(table["First run"], table["Second run"],
                                              strict=True), strict=True))
    assert security["Differential privacy"] == ("off", "off")
    # Both ran here, on this test's one thread: computed alike, in words.
    computed = table.set_index("Measure").loc["Computed with"]
    assert computed["First run"] == computed["Second run"]
    assert computed["First run"].startswith("1 thread on cpu (")
    assert "hospitals trained together, fp32, torch " in computed["First run"]
    assert computed["Change (second − first)"] == "same"

    charts = at.get("plotly_chart")
    assert len(charts) == 1
    traces = json.loads(charts[0].proto.spec)["data"]
    assert [len(t["x"]) for t in traces] == [2, 3]  # rounds 0..1 and 0..2
    assert traces[0]["y"] == pytest.approx([h["mae_hu"] for h in
                                            a.summary()["federation"]["history"]])
    assert len(at.get("image")) == 2 * 4 * 2  # two runs × 4 panels × 2 hospitals


def test_delete_needs_confirmation(runs: dict[str, RunFolder]) -> None:
    run = runs["alpha"]
    at = _page(runs_open=run.run_id)
    assert at.button(key="delete").disabled  # not clickable until the box is ticked
    assert run.path.is_dir()

    at.checkbox(key="confirm_delete").check().run()
    assert not at.button(key="delete").disabled
    at.button(key="delete").click().run()
    assert not at.exception, at.exception
    assert not run.path.exists()
    assert _table(at)["Name"].tolist() == ["beta"]
    assert "runs_open" not in at.query_params


def test_deleting_a_running_run_is_refused(runs_dir: Path) -> None:
    run = create_run(build_config("smoke", sets=["name=busy"]))
    run.set_status("running", pid=os.getpid())
    at = _page(runs_open=run.run_id)
    assert any("can't be deleted" in e.value for e in at.error)
    assert not at.get("button") or all(b.key != "delete" for b in at.button)
    assert not at.checkbox
    assert run.path.is_dir()


def test_damaged_files_are_warned_about(runs: dict[str, RunFolder]) -> None:
    (runs["alpha"].path / "summary.json").write_text("{ not json")
    (runs["beta"].path / "config.yaml").write_text("name: [unclosed")
    at = _page(runs_open=runs["alpha"].run_id)
    warnings = [w.value for w in at.warning]
    assert any("summary.json" in w and runs["alpha"].run_id in w for w in warnings)
    assert any("config.yaml" in w and runs["beta"].run_id in w for w in warnings)
    table = _table(at)
    assert table["Run id"].tolist() == [runs["beta"].run_id, runs["alpha"].run_id]
    assert table["Final MAE (HU)"].isna().tolist() == [False, True]
