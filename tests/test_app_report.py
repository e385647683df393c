"""The Report page, its HTML builder and the Home scorecards, on real tiny runs.

Once per module, four smoke runs (2 rounds) are trained with the engine's own ``execute``:
plain, membership inference, gradient inversion and poisoning. Each test copies that runs
root into its private one (``runs_dir``).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from app.views import membership as membership_ui
from app.views.report import build_report, fmt_mae, make_report, scorecards
from app.views.results import list_runs
from engine.analyses.poisoning import poisoning_verdict
from engine.analyses.results import read_summary
from engine.analyses.study_report import STUDY, StudyRow, study_html, study_markdown
from engine.orchestration import queue
from engine.orchestration.experiment import execute
from engine.orchestration.jobs import cancel_sweep
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run
from engine.orchestration.study import study_folder
from engine.orchestration.study_catalogue import study_cells

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
REPORT, HOME = "../pages/report.py", "../pages/home.py"  # relative to app/
SHORT = ["federation.rounds=2"]
KINDS = {
    "plain": SHORT,
    "mia": [*SHORT, "attacks.membership.enabled=true"],
    "inversion": [*SHORT, "attacks.inversion.enabled=true", "attacks.inversion.iterations=2",
                  "attacks.inversion.restarts=1"],
    "poisoning": [*SHORT, "attacks.poisoning.enabled=true", "attacks.poisoning.noise_std=1.0"],
}
PLOTLY_BUNDLE = "* plotly.js v"  # the licence header that opens the inlined library


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("report-runs")
    ids = {}
    for kind, sets in KINDS.items():
        run = create_run(build_config("smoke", sets=sets), root)
        assert execute(run) is not None, run.status()
        ids[kind] = run.run_id
    return root, ids


@pytest.fixture
def runs(built: tuple[Path, dict[str, str]], runs_dir: Path) -> dict[str, Path]:
    root, ids = built
    shutil.copytree(root, runs_dir)
    return {k: runs_dir / v for k, v in ids.items()}


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The bytes behind each download button, by media file id (AppTest's media store is
    dropped after each run)."""
    store: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):  # noqa: ANN001
        file_id = original(self, path_or_data, mimetype, kind, filename)
        store[file_id] = (path_or_data.encode() if isinstance(path_or_data, str)
                          else bytes(path_or_data))
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return store


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def _page(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60).run()
    at.switch_page(page)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _content(at: AppTest, label: str, store: dict[str, bytes]) -> bytes:
    button = next(b for b in at.get("download_button") if b.proto.label == label)
    return store[button.proto.url.rsplit("/", 1)[-1].split(".")[0]]


# --------------------------------------------------------------------------- build_report


def test_report_html_is_complete_and_offline(runs: dict[str, Path]) -> None:
    for kind, path in runs.items():
        text = build_report(path)
        assert path.name in text
        assert fmt_mae(_summary(path)["federation"]["final"]["mae_hu"]) in text
        assert '<img src="data:image/png;base64,' in text
        assert text.count(PLOTLY_BUNDLE) == 1, kind
        assert "cdn.plot.ly" not in text
        assert "Learning curve" in text
        assert "torch" in text  # the versions table
        # Beside the seed, what else decides the figures (threads, kernels, training path).
        assert "<th>Computed with</th><td>1 thread on cpu (" in text
    sections = {"mia": "Attack: membership inference", "inversion": "Attack: gradient inversion",
                "poisoning": "Attack: poisoning"}
    for kind, title in sections.items():
        text = build_report(runs[kind])
        assert title in text
        assert [t for k, t in sections.items() if k != kind and t in text] == []
    assert "No attack ran" in build_report(runs["plain"])
    mia = read_summary(runs["mia"] / "summary.json").mia
    assert membership_ui.verdict(mia).title.split(":")[0] in build_report(runs["mia"])
    inversion = build_report(runs["inversion"])
    assert inversion.count("data:image/png;base64,") > build_report(runs["plain"]).count(
        "data:image/png;base64,")  # the reconstructions are embedded too
    # Headed by what the strips show: MRI and CT, each original then rebuilt.
    assert "MRI: original | rebuilt · CT: original | rebuilt" in inversion
    assert "average brain</h3>" not in inversion


def test_missing_and_damaged_files_are_named_not_raised(runs: dict[str, Path]) -> None:
    path = runs["mia"]
    (path / "artifacts" / "samples.npz").unlink()
    for png in (path / "artifacts").glob("sample_*.png"):
        png.write_bytes(b"not a png")
    (path / "mia" / "roc.json").unlink()
    report = make_report(path)
    assert any("samples.npz" in p for p in report.problems)
    assert any("sample_center-0.png" in p for p in report.problems)
    assert any("roc.json" in p for p in report.problems)
    assert "Attack: membership inference" in report.html  # the rest is still there

    (runs["plain"] / "summary.json").write_text("{ half-writ")
    report = make_report(runs["plain"])
    assert any("summary.json" in p for p in report.problems)
    assert "summary.json" in report.html and runs["plain"].name in report.html


# --------------------------------------------------------------------------- the page


def test_page_offers_the_three_downloads(runs: dict[str, Path],
                                         downloads: dict[str, bytes]) -> None:
    run_id = runs["poisoning"].name
    at = _page(REPORT, report_run=run_id)
    assert at.title[0].value == "Report"
    assert next(b for b in at.selectbox if b.label == "Run").value == run_id
    assert at.query_params["report_run"] == run_id
    assert not at.warning
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Report (HTML)", "Results (summary.json)", "Metrics per round (CSV)"]

    html_text = _content(at, "Report (HTML)", downloads).decode()
    assert run_id in html_text and "Attack: poisoning" in html_text
    assert json.loads(_content(at, "Results (summary.json)", downloads)) == _summary(
        runs["poisoning"])
    csv = pd.read_csv(io.BytesIO(_content(at, "Metrics per round (CSV)", downloads)))
    records = [json.loads(line) for line in
               (runs["poisoning"] / "metrics.jsonl").read_text().splitlines()]
    assert list(csv.columns) == ["round", "mae_hu", "psnr_db", "ssim"]
    assert csv["round"].tolist() == [r["round"] for r in records] == [0, 1, 2]
    assert csv["mae_hu"].iloc[-1] == pytest.approx(records[-1]["global"]["mae_hu"])

    # Another run picked in the box is remembered in the URL.
    other = runs["mia"].name
    next(b for b in at.selectbox if b.label == "Run").select(other).run()
    assert at.query_params["report_run"] == other


def test_page_warns_on_damaged_runs(runs: dict[str, Path]) -> None:
    (runs["inversion"] / "artifacts" / "samples.npz").unlink()
    next((runs["inversion"] / "inversion").glob("*.png")).unlink()
    at = _page(REPORT, report_run=runs["inversion"].name)
    warnings = " ".join(w.value for w in at.warning)
    assert "samples.npz" in warnings and "inversion/" in warnings

    (runs["plain"] / "summary.json").write_text("not json")
    at = _page(REPORT, report_run=runs["plain"].name)
    assert any("summary.json" in w.value for w in at.warning)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Report (HTML)" in labels


# --------------------------------------------------------------------------- Home


def _pick(at: AppTest, run: Path) -> None:
    """Choose ``run`` in the page's "Run" box (newest first, finished runs only)."""
    ids = [r.run_id for r in list_runs(run.parent) if r.state == "done"]
    next(b for b in at.selectbox if b.label == "Run").select_index(ids.index(run.name)).run()


def _cards(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_home_scorecards_show_the_latest_numbers_and_colours(runs: dict[str, Path]) -> None:
    # Chosen values: a risk verdict at AUC 0.72 → orange; gain over the floor 0.03 with a
    # recovered calibration → green; ratio 2.5 → red.
    mia = _summary(runs["mia"])
    mia["mia"]["verdict"] = {"center-0": "no_evidence", "center-1": "risk",
                             "center-2": "no_evidence", "overall": "risk"}
    mia["mia"]["verdict_attack"] = mia["mia"]["attack"]
    mia["mia"]["patient"]["auc"] = {"center-0": 0.55, "center-1": 0.72, "center-2": 0.61}
    mia["mia"]["patient"]["auc_ci"]["center-1"] = [0.61, 0.83]
    for flags in (mia["mia"]["degenerate"], mia["mia"]["variants"][mia["mia"]["attack"]]
                  ["degenerate"]):
        flags.update(dict.fromkeys(flags, False))
    (runs["mia"] / "summary.json").write_text(json.dumps(mia))
    inv = _summary(runs["inversion"])
    inv["inversion"].update(ssim_body=0.41, floor_ssim_body=0.38, verdict="no_leak")
    first = next(iter(inv["inversion"]["per_client"].values()))
    inv["inversion"]["per_client"] = {"center-0": first | {
        "ssim_body": 0.41, "floor_ssim_body": 0.38, "null_ssim_body": 0.38, "leak": False}}
    (runs["inversion"] / "summary.json").write_text(json.dumps(inv))
    poi = _summary(runs["poisoning"])
    poi["poisoning"]["cells"][0]["mae_ratio"] = 2.5
    poi["poisoning"]["seeds"][0]["mae_ratio"] = poi["poisoning"]["mae_ratio_mean"] = 2.5
    poi["poisoning"]["verdict"] = "broken"
    (runs["poisoning"] / "summary.json").write_text(json.dumps(poi))

    # The newest finished run (poisoning, created last) is shown first; its cards are its
    # own: its MAE and its attack, the attacks it did not run say where to start one.
    at = _page(HOME)
    assert at.query_params.get("home_run") is None
    text = _cards(at)
    assert ":red[● **2.50× the clean error**]" in text
    assert f"● **MAE {fmt_mae(poi['federation']['final']['mae_hu'])}**" in text
    assert "patient-level AUC" not in text and "body SSIM" not in text
    assert sum("Not attacked in this run" in c.value for c in at.caption) == 2
    # Each other run, picked in the box (kept in the URL), shows its own numbers only.
    for run, wanted in (("mia", ":orange[● **patient-level AUC 0.72 (interval 0.61–0.83)**] "
                                "· watch"),
                        ("inversion", ":green[● **body SSIM 0.41 vs null 0.38**]")):
        _pick(at, runs[run])
        assert at.query_params["home_run"] == runs[run].name
        text = _cards(at)
        assert wanted in text, text
        assert "clean error" not in text
        mae = _summary(runs[run])["federation"]["final"]["mae_hu"]
        assert f"● **MAE {fmt_mae(mae)}**" in text
    assert at.dataframe  # the existing "Latest runs" table is still there


def test_scorecard_thresholds(runs: dict[str, Path]) -> None:
    def poison_colour(ratio: float) -> str:
        poi = _summary(runs["poisoning"])
        poi["poisoning"]["cells"][0]["mae_ratio"] = poi["poisoning"]["mae_ratio_mean"] = ratio
        poi["poisoning"]["verdict"] = poisoning_verdict([ratio], [ratio])  # FedAvg: itself
        (runs["poisoning"] / "summary.json").write_text(json.dumps(poi))
        row = next(r for r in list_runs(runs["poisoning"].parent)
                   if r.run_id == runs["poisoning"].name)
        return scorecards(row.summary)[3].colour

    # FedAvg within 25 % of clean: the attack was too weak to judge anything (grey).
    assert [poison_colour(r) for r in (1.0, 1.25, 1.5, 2.0, 3.0)] == [
        "gray", "gray", "orange", "red", "red"]

    # A robust rule's card names what the same attack did to FedAvg (its control).
    poi = _summary(runs["poisoning"])
    poi["federation"]["aggregator"] = "fedmedian"
    poi["poisoning"]["baseline"]["fedmedian"] = poi["poisoning"]["baseline"]["fedavg"]
    poi["poisoning"]["fedavg_control"] = {"aggregator": "fedavg", "self": False,
                                          "seeds": [{"seed": 0, "mae_hu": 690.0,
                                                     "baseline_mae_hu": 250.0,
                                                     "mae_ratio": 2.76}],
                                          "mae_ratio_mean": 2.76, "hurt": True}
    (runs["poisoning"] / "summary.json").write_text(json.dumps(poi))
    row = next(r for r in list_runs(runs["poisoning"].parent) if r.run_id == runs["poisoning"].name)
    assert scorecards(row.summary)[3].detail.endswith(
        "This run used FedMedian; the same attack against FedAvg gave 2.76× over 1 seed.")


def test_home_without_runs_says_where_to_start(runs_dir: Path) -> None:
    at = _page(HOME)
    captions = " ".join(c.value for c in at.caption)
    assert "Federation page" in captions
    for page in ("Membership inference page", "Gradient inversion page", "Poisoning page"):
        assert page in captions
    assert "●" not in _cards(at)
    assert len(at.get("page_link")) >= 5  # the intro's link and one per card


# --------------------------------------------------------------------------- the study


def test_study_section_queues_the_study_and_shows_its_report(runs_dir: Path) -> None:
    at = _page(REPORT)
    assert any("No finished run yet" in i.value for i in at.info)  # and the study is offered
    button = at.button(key="sweep_start_study-demo")
    assert button.label == "Start the study in the background"
    assert "fedsct study --scale demo" in button.help
    assert any(c.value.startswith(f"Not run yet: {len(study_cells('demo'))} experiments")
               for c in at.caption)
    button.click().run()
    assert not at.exception, at.exception
    folder = study_folder("demo")
    jobs_now = queue.jobs(runs_dir)
    assert [j.label for j in jobs_now] == ["the study (demo scale)"]
    assert jobs_now[0].folder == str(folder)
    cancel_sweep(folder, grace_s=10)
    assert queue.jobs(runs_dir) == []

    row = StudyRow("dlg", "whole image SSIM ≤ 0.05", STUDY["dlg"], "4 hospitals, 4 slices",
                   "DLG, 300 × 20 iterations, 1 restart", ["r1"])
    (folder / "report.md").write_text(study_markdown([row], "demo"))
    (folder / "report.html").write_text(study_html([row], "demo"))
    at = _page(REPORT)
    text = "\n".join(m.value for m in at.markdown)
    assert "| Gradient inversion: the study's DLG | whole image SSIM ≤ 0.05 |" in text
    assert "Study report (HTML)" in [b.proto.label for b in at.get("download_button")]
