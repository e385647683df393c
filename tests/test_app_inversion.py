"""The Gradient inversion page, driven headless with AppTest on a real run folder.

One tiny inversion run (3 hospitals, 2 slices each, 3 attack iterations) is trained once per
module with the engine's own ``execute``; each test copies it into a private runs root. The
defense rerun starts a real background job and cancels it at once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from app.views.common import hospital_name
from app.views.inversion import RECOGNISABLE, cell_text, leak_level, verdict
from engine.analyses.results import InversionSummary
from engine.analyses.sweep_table import SweepRow
from engine.core.config import config_hash
from engine.core.run_folder import ACTIVE, RunFolder
from engine.orchestration.experiment import execute
from engine.orchestration.jobs import cancel_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, create_run, open_run
from engine.orchestration.sweep_catalogue import SWEEPS, cell_label
from engine.orchestration.sweeps import sweep_folder

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
INVERSION = "../pages/inversion.py"  # relative to the entrypoint's folder (app/)
TINY = ["data.centers=3", "data.patients_per_center=1", "data.heldout_per_center=1",
        "data.slices_per_patient=2", "data.image_size=32", "model.channels=[4,8]",
        "model.num_res_units=0", "federation.rounds=1", "federation.optimizer=sgd",
        "attacks.inversion.enabled=true", "attacks.inversion.iterations=3",
        "attacks.inversion.restarts=2", "attacks.inversion.snapshot_every=1",
        "attacks.inversion.target_center=all"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of a tiny finished inversion run (a few seconds)."""
    root = tmp_path_factory.mktemp("inv-runs")
    run = create_run(build_config(sets=TINY), root)
    assert execute(run) is not None, run.status()
    return run.path


def _copy(src: Path, root: Path, run_id: str | None = None) -> RunFolder:
    root.mkdir(parents=True, exist_ok=True)
    return RunFolder(Path(shutil.copytree(src, root / (run_id or src.name))))


def _page(**params: str) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    at.switch_page(INVERSION)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Gradient inversion"
    return at


def _md(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def _captions(at: AppTest) -> list[str]:
    return [c for im in at.image for c in im.captions]


def _spec(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def test_empty_runs_folder_explains_and_offers_presets(runs_dir: Path) -> None:
    at = _page(inv_run="no-such-run")
    assert any("can't be opened" in w.value for w in at.warning)
    assert "inv_run" not in at.query_params
    assert any("No gradient-inversion results yet" in i.value for i in at.info)
    for name in ("inversion-factors", "inversion-budget", "inversion-defenses"):
        button = at.button(key=f"sweep_start_{name}")
        assert button.label == "Start the study in the background" and not button.disabled
        assert f"fedsct sweep --preset {name}" in button.help
    not_run = [c.value for c in at.caption if c.value.startswith("Not run yet")]
    minutes = SWEEPS["inversion-factors"]["minutes"]  # measured, see benchmarks/README.md
    assert len(not_run) == 3 and f"10 experiments, about {minutes} min (on 2 quiet" in not_run[0]
    assert not at.image and not at.get("plotly_chart") and not at.select_slider
    for preset in ("inversion-easy", "dlg-paper", "ig-strong"):
        assert not at.button(key=f"start_{preset}").disabled
    assert not at.button(key="rerun_defended").disabled


def test_run_shows_verdict_table_images_and_slider(runs_dir: Path, tiny: Path) -> None:
    run = _copy(tiny, runs_dir)
    inv = run.summary()["inversion"]
    per = inv["per_client"]
    at = _page()

    # The verdict: the worst-case hospital's body SSIM against its null (unrelated
    # patients' slices, matched the same way), numbers beside it.
    worst = max(per, key=lambda c: (leak_level(per[c]["ssim_body"], per[c]["leak"]),
                                    per[c]["ssim_body"] - per[c]["null_ssim_body"]))
    s, f = per[worst]["ssim_body"], per[worst]["null_ssim_body"]
    # Three iterations rebuild nothing, not even the calibration controls: inconclusive.
    assert inv["verdict"] != "no_leak" and not inv["calibration"]["recovered"]
    expected = ("Recognisable slices" if s >= RECOGNISABLE and per[worst]["leak"]
                else "Coarse anatomy only" if per[worst]["leak"]
                else "Inconclusive: nothing was rebuilt")
    assert expected in _md(at)
    assert "Calibration: the same attack at the same budget on 3 control uploads" in _md(at)
    assert any("Inverting Gradients (cosine matching, 3 iterations, 2 random starts)"
               in c.value for c in at.caption)
    assert f"Worst-case hospital **{hospital_name(worst)}**: body SSIM **{s:.2f}**" in _md(at)
    assert f"**{f:.2f}** for unrelated patients' slices" in _md(at)
    assert any("SSIM ≤ 0.16 and PSNR ≤ 11 dB" in c.value for c in at.caption)
    assert any("L1 loss" in i.value and "sqrt(d² + ε)" in i.value for i in at.info)
    assert next(s for s in at.selectbox if s.label == "Attacked run").value == run.run_id

    # Per-hospital numbers are summary.json's.
    table = at.dataframe[0].value
    assert table["Hospital"].tolist() == [hospital_name(c) for c in per]
    for key in ("ssim", "ssim_body", "psnr_db", "ssim_ct", "psnr_db_ct", "floor_ssim_body",
                "round"):
        np.testing.assert_allclose(table[key].to_numpy(float), [per[c][key] for c in per])

    # Images: MRI and CT rows of original | reconstruction | error | floor, then snapshots.
    captions = _captions(at)
    assert captions[:8] == [
        "Original MRI (the hospital's patient)", "Attacker's reconstruction",
        "|Error| (0 to 0.5 of full intensity, brighter = worse)",
        "Attacker's average brain (the floor)", "Original CT (-200 to 1000 HU)",
        "Attacker's reconstruction (-200 to 1000 HU)", "|Error| (0 to 500 HU, brighter = worse)",
        "Attacker's average CT (the floor, -200 to 1000 HU)"]
    assert captions[8:] == ["MRI at iteration 3", "CT (-200 to 1000 HU) at iteration 3"]

    # The iteration slider walks the snapshots; the loss curve (log y) marks the one shown.
    with np.load(run.path / "inversion" / "center-0.npz") as npz:
        losses, iters = npz["losses"], npz["snapshot_iterations"]
    slider = at.select_slider[0]
    assert slider.label == "Attack iteration"
    assert list(slider.options) == [str(i + 1) for i in iters]
    assert slider.value == len(iters)
    spec = _spec(at)
    assert spec["layout"]["yaxis"]["type"] == "log"
    np.testing.assert_allclose(spec["data"][0]["y"], losses)
    last = at.image[-1].value
    slider.set_value(1).run()
    assert not at.exception, at.exception
    assert _captions(at)[8] == "MRI at iteration 1"
    assert at.image[-1].value != last  # the CT at iteration 1 is not the final one
    assert _spec(at)["layout"]["shapes"][0]["x0"] == 1

    # Another hospital and another matched slice.
    at.selectbox(key=f"inv_center_{run.run_id}").select("center-2").run()
    pair = at.selectbox(key=f"inv_pair_{run.run_id}_center-2")
    assert len(pair.options) == per["center-2"]["n"] == 2
    pair.select(1).run()
    assert not at.exception, at.exception
    assert len(at.image) == 10


def test_damaged_files_give_warnings(runs_dir: Path, tiny: Path) -> None:
    run = _copy(tiny, runs_dir, "20990101-000000-run-0001")
    npz = run.path / "inversion" / "center-0.npz"
    npz.write_bytes(b"not a zip file")
    at = _page()
    assert any(str(npz) in w.value for w in at.warning)
    assert "#### :" in _md(at)  # the verdict and table still come from summary.json
    assert len(at.dataframe) == 1

    npz.unlink()
    at = _page()
    assert any(str(npz) in w.value for w in at.warning)

    broken = _copy(tiny, runs_dir, "20990102-000000-run-0002")
    summary = broken.summary()
    summary["inversion"]["per_client"]["center-0"] = {"ssim": "n/a"}
    broken.write_summary(summary)
    at = _page(inv_run=broken.run_id)
    # A summary that does not read as a run summary is named as damaged, never a traceback.
    assert any(f"{broken.path / 'summary.json'}" in w.value and "damaged" in w.value
               for w in at.warning)

    (broken.path / "summary.json").write_text("{half-written")
    at = _page()
    assert any(str(broken.path / "summary.json") in w.value for w in at.warning)


def test_verdict_levels() -> None:
    def inv(s: float, f: float, engine_verdict: str | None = None) -> InversionSummary:
        def client(body: float, floor: float) -> dict:
            return {"ssim_body": body, "floor_ssim_body": floor, "ssim": body, "psnr_db": 10.0}

        out = {"per_client": {"center-0": client(s, f), "center-1": client(0.1, 0.4)}}
        return InversionSummary.model_validate(
            out | ({"verdict": engine_verdict} if engine_verdict else {}))

    # Within 0.05 of the floor: safe only where the engine's calibration said so.
    assert verdict(inv(0.44, 0.40, "no_leak")).colour == "green"
    assert verdict(inv(0.44, 0.40, "inconclusive")).colour == "gray"
    assert verdict(inv(0.44, 0.40)).colour == "gray"  # an older run without a calibration
    v = verdict(inv(0.50, 0.40, "leak"))
    assert v.colour == "orange" and "**Hospital A**: body SSIM **0.50**" in v.detail
    assert verdict(inv(0.85, 0.40, "leak")).colour == "red"
    assert verdict(inv(0.62, 0.60, "no_leak")).colour == "green"  # the floor is as high


def test_defense_rerun_starts_a_defended_job(runs_dir: Path) -> None:
    at = _page()
    at.toggle(key="w_inv_secagg").set_value(True)
    at.radio(key="w_inv_dp").set_value("strong (ε 4)")
    at.radio(key="w_inv_prune").set_value("90% of each update").run()
    assert not at.exception, at.exception
    at.button(key="rerun_defended").click().run()
    assert not at.exception, at.exception
    job = open_run(at.query_params["inv_run"])
    try:
        cfg = job.config()
        assert cfg.name == "inversion-easy"
        assert cfg.defenses.secure_aggregation
        assert (cfg.defenses.dp.enabled, cfg.defenses.dp.target_epsilon,
                cfg.defenses.dp.clip_norm) == (True, 4.0, 0.05)
        assert cfg.defenses.prune_fraction == 0.9
        assert cfg.federation.batch_size == 1
        assert job.status().state in ACTIVE
        assert at.get("progress")
        # One job runs at a time; the buttons stay usable and say the next one queues.
        for key in ("rerun_defended", "start_inversion-easy"):
            button = at.button(key=key)
            assert not button.disabled and "Queued behind" in button.help, (key, button.help)
        at.button(key="start_inversion-easy").click().run()
        assert not at.exception, at.exception
        second = open_run(at.query_params["inv_run"])
        assert second.run_id != job.run_id
        assert second.status().state == "queued"  # behind the defended run
    finally:
        cancel_job(job, grace_s=0)
    assert job.status().state == "cancelled"
    cancel_job(second, grace_s=0)
    assert second.status().state == "cancelled"


def test_defense_rerun_reuses_an_identical_finished_run(runs_dir: Path, tiny: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The copied run computed its figures on this process's one thread: so would a new one.
    monkeypatch.setenv("FEDSCT_THREADS", "1")
    cfg = build_config("inversion-easy", sets=["defenses.secure_aggregation=true"])
    old = _copy(tiny, runs_dir, "20000101-000000-inversion-easy-0001")
    (old.path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    status = json.loads((old.path / "status.json").read_text())
    status |= {"created": 1.0, "config_hash": config_hash(cfg)}
    (old.path / "status.json").write_text(json.dumps(status))
    newer = _copy(tiny, runs_dir)
    RunIndex(runs_dir).rebuild()

    at = _page()
    assert next(s for s in at.selectbox if s.label == "Attacked run").value == newer.run_id
    at.toggle(key="w_inv_secagg").set_value(True).run()
    assert any(old.run_id in c.value for c in at.caption)
    at.button(key="rerun_defended").click().run()
    assert not at.exception, at.exception
    assert at.query_params["inv_run"] == old.run_id
    assert next(s for s in at.selectbox if s.label == "Attacked run").value == old.run_id
    assert any(old.run_id in s.value for s in at.success)
    assert len(RunIndex(runs_dir).list()) == 2  # nothing new was started


def test_sweep_charts_use_plain_labels(runs_dir: Path) -> None:
    def rows(name: str, values: list[tuple[float, float, float]]) -> list[dict]:
        return [{"cell": cell_label(cell), "run_id": f"r{i}", "mae_hu": mae,
                 "inversion_ssim_body": s, "inversion_floor_ssim_body": f}
                for i, (cell, (s, f, mae)) in enumerate(zip(SWEEPS[name]["cells"], values,
                                                             strict=False))]

    factors = rows("inversion-factors", [(0.9, 0.4, 90), (0.5, 0.4, 95), (0.45, 0.4, 92),
                                         (0.6, 0.4, 90), (0.7, 0.4, 91), (0.42, 0.4, 80),
                                         (0.8, 0.4, 85), (0.6, 0.4, 85), (0.3, 0.4, 85),
                                         (0.5, 0.4, 85)])
    defenses = rows("inversion-defenses", [(0.9, 0.4, 90.0), (0.41, 0.4, 90.0),
                                           (0.8, 0.4, 100.0)])
    budget = [{"cell": cell_label(cell), "run_id": f"b{i}", "inversion_iterations": it,
               "inversion_restarts": 4, "inversion_tv_weight": tv, "inversion_final_loss": loss,
               "inversion_ssim_body": 0.1, "inversion_floor_ssim_body": 0.3,
               "calibration_ssim_body": cal, "calibration_floor_ssim_body": 0.18,
               "inversion_verdict": verdict}
              for i, (cell, (it, tv, loss, cal, verdict)) in enumerate(zip(
                  SWEEPS["inversion-budget"]["cells"],
                  [(400, 1e-4, 0.5, 0.2, "inconclusive"), (2000, 1e-4, 0.3, 0.3, "no_leak"),
                   (8000, 1e-4, 0.2, 0.4, "no_leak"), (2000, 1e-3, 0.3, 0.3, "no_leak")],
                  strict=False))]
    for name, table in (("inversion-factors", factors), ("inversion-budget", budget),
                        ("inversion-defenses", defenses)):
        folder = sweep_folder(name)
        folder.mkdir(parents=True)
        (folder / "table.json").write_text(json.dumps(table))
        (folder / "sweep.json").write_text(json.dumps({
            "state": "cancelled", "cells_done": len(table),
            "cells": [{"label": cell_label(c)} for c in SWEEPS[name]["cells"]]}))

    at = _page()
    bars = _spec(at, 0)["data"]
    assert bars[0]["x"] == ["vulnerable design", "L1 loss", "InstanceNorm", "4 slices per step",
                            "4 local steps", "late round", "64 px", "Adam",
                            "Adam + attacker differentiates through Adam's step",
                            "Adam + 4 local steps"]
    assert bars[0]["y"] == [0.9, 0.5, 0.45, 0.6, 0.7, 0.42, 0.8, 0.6, 0.3, 0.5]
    assert bars[1]["y"] == [0.4] * 10
    curves = {t["name"]: t for t in _spec(at, 1)["data"] if t.get("name")}
    # Only the default TV weight's cells, in budget order, on a log axis of iterations.
    assert curves["study's model: reconstruction"]["x"] == [400, 2000, 8000]
    assert curves["calibration controls: reconstruction"]["y"] == [0.2, 0.3, 0.4]
    budget_rows = at.dataframe[0].value
    assert budget_rows["TV weight"].tolist() == [1e-4, 1e-4, 1e-4, 1e-3]
    assert budget_rows["Verdict"].tolist() == ["inconclusive", "no leak", "no leak", "no leak"]
    points = _spec(at, 2)["data"][0]
    assert points["text"] == ["no defense", "secure aggregation", "DP ε 64"]
    assert points["x"] == [90.0, 90.0, 100.0]
    table = at.dataframe[1].value
    assert table["Extra error (HU)"].tolist() == [0.0, 0.0, 10.0]
    assert any("3 of 7 experiments finished so far" in c.value for c in at.caption)
    assert any(c.value.startswith("Stopped after 3 of 7") for c in at.caption)
    assert at.button(key="sweep_start_inversion-defenses").label == "Continue the study"
    assert cell_text(SweepRow(cell="prune_fraction=0.99"), "x") == "pruning 99%"
