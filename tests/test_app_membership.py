"""The Membership inference page, driven headless with AppTest on real run folders.

Two tiny runs (no defense, secure aggregation) are trained once per module with the engine's
own ``execute``; each test copies what it needs into a private runs root. No background job
is started: the start button is tested with ``start_job`` replaced by a queued run folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import engine.orchestration.jobs
from app.views.common import hospital_name
from app.views.dp_audit import audit_verdict
from app.views.membership import attack_name, dp_sentence, noise_label, verdict
from engine.analyses.results import DPAuditSummary, MiaSummary
from engine.analyses.sweep_table import SweepRow
from engine.core.run_folder import RunFolder
from engine.orchestration.experiment import execute
from engine.orchestration.presets import PRESETS, build_config
from engine.orchestration.store import create_run, open_run
from engine.orchestration.sweeps import sweep_folder

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
MEMBERSHIP = "../pages/membership.py"  # relative to the entrypoint's folder (app/)
TINY = ["data.centers=3", "data.patients_per_center=2", "data.heldout_per_center=2",
        "data.slices_per_patient=4", "data.image_size=32", "model.channels=[8,16,32]",
        "model.num_res_units=1", "federation.rounds=3", "federation.local_epochs=2",
        "federation.server_view_rounds=[2,3]", "attacks.membership.bootstrap=100"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders of a tiny mia-paper and mia-secagg run (a few seconds each)."""
    root = tmp_path_factory.mktemp("mia-runs")
    out = {}
    for preset in ("mia-paper", "mia-secagg"):
        run = create_run(build_config(preset, sets=TINY), root, preset=preset)
        assert execute(run) is not None, run.status()
        out[preset] = run.path
    return out


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(root))
    return root


def _copy(src: Path, root: Path, run_id: str | None = None) -> RunFolder:
    return RunFolder(Path(shutil.copytree(src, root / (run_id or src.name))))


def _page(**params: str) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    at.switch_page(MEMBERSHIP)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Membership inference"
    return at


def _select(at: AppTest, label: str):  # noqa: ANN202 - AppTest's Selectbox
    return next(s for s in at.selectbox if s.label == label)


def _md(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_no_runs_shows_guidance(runs_dir: Path) -> None:
    at = _page(mia_run="no-such-run")
    assert any("can't be opened" in w.value for w in at.warning)
    assert "mia_run" not in at.query_params
    assert any("'mia-paper' preset" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    for preset in ("mia-paper", "mia-secagg"):
        assert not at.button(key=f"start_{preset}").disabled
    # Under each button, how long it takes: nothing ran here yet, so the reference figure.
    minutes = [f"About {PRESETS[p]['minutes']:.0f} min (on 2 quiet CPU cores" for p in
               ("mia-paper", "mia-secagg")]
    assert all(any(c.value.startswith(m) for c in at.caption) for m in minutes)


def test_run_shows_verdict_curves_and_tables(runs_dir: Path, trained: dict[str, Path]) -> None:
    run = _copy(trained["mia-paper"], runs_dir)
    mia = run.summary()["mia"]
    at = _page()

    # The engine's patient-level verdict, told on the basis every run gets: all hospitals
    # pooled, then the worst single hospital, each with its interval or the word that the
    # sample cannot give one (2 v 2 patients per hospital here).
    patient = mia["patient"]
    worst = max(patient["auc"].values())
    pooled = patient["pooled"]
    if mia["verdict"]["overall"] == "risk":
        assert ("High risk" if worst >= 0.8 or pooled["auc"] >= 0.8 else "Risk:") in _md(at)
    else:
        assert "No evidence of membership leakage at this sample size" in _md(at)
    assert (f"All hospitals together, {attack_name(mia['verdict_attack'])}: patient-level AUC "
            f"**{pooled['auc']:.2f}**") in _md(at)
    assert f"patient-level AUC **{worst:.2f}** (95% interval" in _md(at)
    for ci in patient["auc_ci"].values():
        if ci[0] == ci[1]:  # a degenerate interval is never printed as one
            assert f"(95% interval {ci[0]:.2f}–{ci[1]:.2f}" not in _md(at)
            assert "cannot be estimated at this sample size" in _md(at)
    shown = max(patient["auc"], key=patient["auc"].__getitem__)  # the worst hospital
    intervals = [pooled["auc_ci"], patient["auc_ci"][shown]]
    assert ("resampling patients" in _md(at)) == any(lo < hi for lo, hi in intervals)
    assert "the tables and curves below score single slices" in _md(at)
    assert _select(at, "Attacked run").value == run.run_id
    assert len(at.get("plotly_chart")) == 1
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    names = [hospital_name(c) for c in mia["auc"]]  # center-0 → Hospital A, on every page
    assert names[0] == "Hospital A"
    assert titles == [*names, "All hospitals"]  # one small chart per hospital + all

    aucs, tprs = (d.value for d in at.dataframe)
    assert list(aucs.columns) == ["Attack", *names, "All hospitals"]
    assert len(aucs) == len(mia["variants"])
    assert aucs["Attack"].iloc[0] == "FedMIA-I (loss, per-sample σ) ★"
    assert aucs["Hospital A"].iloc[0] == f"{mia['auc']['center-0']:.2f}"
    assert tprs["Hospital"].tolist() == [*names, "All hospitals"]

    _select(at, "Attack to plot").select("global_loss").run()
    assert not at.exception, at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    auc = mia["variants"]["global_loss"]["auc"]["center-0"]
    assert f"AUC {auc:.2f}" in spec["data"][1]["hovertemplate"]


def test_compare_with_secagg_run(runs_dir: Path, trained: dict[str, Path]) -> None:
    paper = _copy(trained["mia-paper"], runs_dir)
    secagg = _copy(trained["mia-secagg"], runs_dir)
    at = _page(mia_run=paper.run_id)  # a reload: the URL picks the run
    assert _select(at, "Attacked run").value == paper.run_id
    _select(at, "Compare with").select(secagg.run_id).run()
    assert not at.exception, at.exception
    assert at.query_params["mia_compare"] == secagg.run_id

    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    legend = {t["name"] for t in spec["data"] if t.get("showlegend")}
    assert any("mia-paper" in n and "no defense" in n for n in legend)
    assert any("mia-secagg" in n and "SecAgg" in n for n in legend)
    assert {t["line"]["dash"] for t in spec["data"]} >= {"solid", "dash"}
    assert "Compared run" in _md(at)
    glob = secagg.summary()["mia"]["baselines"]["global_loss"]
    assert f"still reaches AUC **{max(glob.values()):.2f}**" in _md(at)


def test_secagg_run_opens_on_the_attack_its_verdict_rests_on(runs_dir: Path,
                                                           trained: dict[str, Path]) -> None:
    """Under secure aggregation the verdict rests on the global-model attack: the chart opens
    on it and the table stars it, not the per-hospital FedMIA on masked uploads."""
    secagg = _copy(trained["mia-secagg"], runs_dir)
    at = _page(mia_run=secagg.run_id)
    assert secagg.summary()["mia"]["verdict_attack"] == "global_loss"
    assert _select(at, "Attack to plot").value == "global_loss"
    aucs = at.dataframe[0].value
    starred = [a for a in aucs["Attack"] if "★" in a]
    assert len(starred) == 1 and starred[0].startswith(attack_name("global_loss"))
    assert any("Slices caught at" in c for c in at.dataframe[1].value.columns)


def test_degenerate_centers_are_labelled(runs_dir: Path, trained: dict[str, Path]) -> None:
    run = _copy(trained["mia-paper"], runs_dir, "20991231-000000-flat-0000")
    summary = run.summary()
    mia = summary["mia"]
    flags = {c: True for c in mia["auc"]}
    mia["degenerate"] = flags
    mia["variants"][mia["attack"]]["degenerate"] = flags
    run.write_summary(summary)

    at = _page()
    assert "No signal: every hospital looked identical" in _md(at)
    aucs, tprs = (d.value for d in at.dataframe)
    assert set(aucs.iloc[0].drop("Attack")) == {"degenerate"}
    assert "degenerate" not in set(aucs.iloc[-1])  # other attacks keep their numbers
    assert (tprs.iloc[0].drop("Hospital") == "degenerate").all()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "Hospital A (no signal)" in [a["text"] for a in spec["layout"]["annotations"]]


def test_verdict_follows_the_engine_and_skips_degenerate_centers() -> None:
    data = {"attack": "fedmia-i/phi", "verdict_attack": "fedmia-i/phi",
            "verdict": {"center-0": "no_evidence", "center-1": "risk",
                        "center-2": "no_evidence", "overall": "risk"},
            "patient": {"auc": {"center-0": 0.99, "center-1": 0.7, "center-2": 0.55},
                        "auc_ci": {"center-1": [0.6, 0.8]}},
            "variants": {"fedmia-i/phi": {"degenerate": {"center-0": True, "center-1": False,
                                                         "center-2": False}}}}
    v = verdict(MiaSummary.model_validate(data))
    assert v.colour == "orange" and "**Hospital B**" in v.detail  # not the degenerate A
    assert "AUC **0.70** (95% interval 0.60–0.80" in v.detail
    assert v.value == 0.7  # the number a comparison of runs reads: the one shown
    data["verdict"] = dict.fromkeys(data["verdict"], "no_evidence")
    v = verdict(MiaSummary.model_validate(data))
    assert v.colour == "blue" and v.title.startswith("No evidence")
    assert "**Hospital B**" in v.detail
    # With pooled figures the pooled basis comes first; 2 v 2 patients give no interval.
    data["patient"] |= {"pooled": {"auc": 0.81, "auc_ci": [0.59, 1.0], "p_value": 0.019,
                                   "n": {"members": 8, "nonmembers": 8}}}
    data["patient"]["auc_ci"]["center-1"] = [1.0, 1.0]
    v = verdict(MiaSummary.model_validate(data))
    assert v.detail.startswith("All hospitals together, FedMIA-I (loss, per-sample σ): "
                               "patient-level AUC **0.81** (95% interval 0.59–1.00")
    assert "from 8 training and 8 held-out patients" in v.detail
    assert ("Worst single hospital **Hospital B**: patient-level AUC **0.70** (95% interval: "
            "cannot be estimated at this sample size)") in v.detail
    assert "1.00–1.00" not in v.detail and v.figure.startswith("patient-level AUC 0.81")
    assert v.value == 0.81  # the pooled AUC the verdict shows, not a hospital's 0.99 or 0.70
    old = verdict(MiaSummary.model_validate({"auc": {"center-0": 0.9}}))
    assert old.title.startswith("This run was made by an older")


def test_old_or_damaged_results_are_explained(runs_dir: Path, trained: dict[str, Path]) -> None:
    old = _copy(trained["mia-paper"], runs_dir)
    shutil.rmtree(old.path / "mia")  # an older engine stored no ROC points
    at = _page()
    assert any("no ROC curves" in i.value for i in at.info)

    summary = old.summary()
    summary["mia"] = {"attack": "fedmia-i/phi", "auc": {"center-0": "n/a"}}
    old.write_summary(summary)
    at = _page()
    assert any(str(old.path / "summary.json") in w.value and "damaged" in w.value
               for w in at.warning)


def test_dp_tradeoff_from_sweep_table(runs_dir: Path) -> None:
    rows = [{"cell": "baseline", "dp_enabled": False, "epsilon": None, "mae_hu": 100.0,
             "patient_auc_pooled": 0.95, "patient_auc_ci_pooled": [0.9, 1.0],
             "mia_verdict": "risk"}]
    for level, values in (("client", [(64.0, 0.9, "risk", 104.0), (4.0, 0.55, "no_evidence",
                                                                     130.0)]),
                          ("sample", [(64.0, 0.6, "no_evidence", 180.0)])):
        for eps, auc, v, mae in values:
            rows.append({"cell": f"{level} {eps}", "dp_enabled": True, "dp_level": level,
                         "epsilon": eps, "mae_hu": mae, "patient_auc_pooled": auc,
                         "patient_auc_ci_pooled": [auc - 0.1, auc + 0.1], "mia_verdict": v})
    folder = sweep_folder("mia-dp")
    folder.mkdir(parents=True)
    (folder / "table.json").write_text(json.dumps(rows))
    (folder / "sweep.json").write_text(json.dumps({"state": "cancelled", "cells_done": 4,
                                                   "cells": [{}] * 9}))

    at = _page()
    text = _md(at)
    assert "Differential privacy: how ε changes the attack" in text
    assert ("With **hospital-level DP**, from **ε 4** on the attack shows no evidence at this "
            "sample size. The model's average error goes from 100 HU without DP to 130 HU "
            "(+30 HU).") in text
    assert "With **patient-level DP**, from **ε 64** on" in text
    assert any("4 of 9 experiments finished so far" in c.value for c in at.caption)
    assert any(c.value.startswith("Stopped after 4 of 9 experiments") for c in at.caption)
    assert at.button(key="sweep_start_mia-dp").label == "Continue the study"
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["x"] == ["ε 64", "ε 4"] and spec["data"][0]["y"] == [0.9, 0.55]
    np.testing.assert_allclose(spec["data"][0]["error_y"]["array"], [0.1, 0.1])
    assert any(t.get("yaxis") == "y2" for t in spec["data"])  # MAE on the second axis


def test_dp_sentence_while_the_sweep_is_young_or_dp_is_too_weak() -> None:
    base = SweepRow(cell="baseline", dp_enabled=False, mae_hu=100.0)
    assert "Only the run without privacy noise" in dp_sentence([base])
    weak = SweepRow(dp_enabled=True, dp_level="client", epsilon=64.0, mae_hu=104.0,
                    mia_verdict="risk")
    assert "every budget tested still leaves evidence" in dp_sentence([base, weak])
    assert noise_label(weak) == "hospital-level DP, ε 64"


def test_start_button_tracks_the_job(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []

    def fake_start(cfg, root=None, preset=None, owner=None):  # noqa: ANN001, ANN202 - its shape
        run = create_run(cfg, root, preset=preset)  # stays queued: nothing trains
        started.append((cfg.name, cfg.defenses.secure_aggregation))
        return run

    monkeypatch.setattr(engine.orchestration.jobs, "start_job", fake_start)
    at = _page()
    at.button(key="start_mia-secagg").click().run()
    assert not at.exception, at.exception
    assert started == [("mia-secagg", True)]
    assert at.query_params["mia_run"]
    assert "Waiting for its turn in the job queue" in at.get("progress")[0].proto.text
    assert not at.button(key="start_mia-paper").disabled  # a second job would queue
    assert at.button(key="cancel_mia_run")

    open_run(at.query_params["mia_run"]).set_status("failed", error="RuntimeError: boom")
    at.run()
    assert any("boom" in e.value for e in at.error)
    assert not at.button(key="start_mia-paper").disabled


def test_privacy_audit_section_shows_the_claim_beside_the_audit(runs_dir: Path) -> None:
    run = create_run(build_config("dp-audit", sets=["federation.rounds=2",
                                                    "attacks.dp_audit.canaries=100"]),
                     runs_dir, preset="dp-audit")
    summary = execute(run)
    assert summary is not None, run.status()
    audit = summary["dp_audit"]
    rows = [{"cell": f"{kind} {eps}", "audit_kind": kind, "epsilon": eps, "audit_bound": bound,
             "audit_cap": 4.6, "audit_verdict": "consistent"}
            for kind, eps, bound in (("client", None, 4.6), ("client", 8.0, 1.97),
                                     ("client", 1.0, 0.04), ("patient", 8.0, 1.32))]
    folder = sweep_folder("dp-audit")
    folder.mkdir(parents=True)
    (folder / "table.json").write_text(json.dumps(rows))
    (folder / "sweep.json").write_text(json.dumps({"state": "done", "cells_done": 4,
                                                   "cells": [{}] * 4}))

    at = _page(audit_run=run.run_id)
    text = _md(at)
    assert "Privacy audit: does the noise give the ε the accountant claims?" in text
    claimed = f"{audit['accountant_epsilon']:.3g}"
    assert f"Consistent with the accountant's ε ≤ {claimed}" in text
    assert f"certifies ε ≥ **{audit['epsilon_lower_bound']:.2f}**" in text
    assert "100 canary hospitals" in text and "over 2 rounds" in text
    table = at.dataframe[-1].value
    assert table["Accountant ε"].tolist() == [claimed]
    assert table["Verdict"].tolist() == ["consistent"]
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = [t["name"] for t in spec["data"]]
    assert names[0].startswith("bound = claim")  # the diagonal
    assert spec["data"][1]["y"] == [0.04, 1.97, 4.6]  # hospital level, by claimed ε
    assert spec["data"][1]["x"][-1] == 256.0  # ε ∞ drawn at the axis's "∞" tick
    assert "no audit bound exceeds the accountant's ε; the closest: ε ≥ 1.97" in text


@pytest.mark.parametrize(("verdict", "claimed", "colour", "words"), [
    ("violation", 1.0, "red", "gives less privacy than claimed"),
    ("weak_audit", 8.0, "gray", "too small to test the claim"),
    ("consistent", None, "gray", "No privacy is claimed"),
    ("consistent", 8.0, "green", "Consistent with the accountant's ε ≤ 8"),
])
def test_audit_verdicts_in_words(verdict, claimed, colour, words) -> None:
    block = DPAuditSummary(kind="patient", epsilon_lower_bound=3.2, canaries=500, cap=4.6,
                           accountant_epsilon=claimed, verdict=verdict, guesses=100,
                           correct=98, rounds=1)
    v = audit_verdict(block)
    assert v.colour == colour and words in v.title
    assert "canary patients in Hospital A's DP-SGD" in v.detail and "over 1 round;" in v.detail
