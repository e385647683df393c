"""What-if for one patient: the engine's answer (real training and attacks on a tiny
federation with an added NIfTI patient) and the What-if page over it (AppTest)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import app.views.whatif
from app.views.common import hospital_name
from app.views.report import make_report
from app.views.whatif import membership_verdict
from engine.analyses.results import WhatifMembership
from engine.analyses.whatif import EXPOSED_RANK, chance_rate, patient_exposure, patient_scores
from engine.attacks.membership import membership_candidates
from engine.core.config import ConfigError
from engine.core.run_folder import RunFolder
from engine.data.cohort import load_cohort, whatif_patient_id
from engine.data.nifti import save_patient_folder
from engine.data.phantom import example_patient_volume, phantom_cohort
from engine.data.synthrad import load_synthrad_patient
from engine.orchestration.presets import build_config
from engine.orchestration.sweeps import run_sweep, sweep_folder

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
WHATIF = "../pages/whatif.py"
# The whatif preset shrunk to seconds: 3 hospitals of 1 + 1 patients, 32 px, 2 rounds.
TINY = ("data.centers=3", "data.patients_per_center=1", "data.heldout_per_center=1",
        "data.slices_per_patient=2", "data.image_size=32", "model.channels=[4,8]",
        "model.num_res_units=0", "federation.rounds=2", "federation.local_epochs=1",
        "federation.server_view_rounds=all", "attacks.membership.bootstrap=0",
        "attacks.inversion.iterations=3")


def test_patient_exposure_ranks_against_non_members():
    assert patient_exposure(0.9, np.array([0.1, 0.2, 0.3, 0.95]))["rank"] == 0.75
    ties = patient_exposure(0.5, np.array([0.5, 0.5]))
    assert ties["rank"] == 0.5 and not ties["exposed"]
    top = patient_exposure(1.0, np.linspace(0, 0.9, 10))
    assert top["rank"] == 1.0 and top["exposed"] and top["nonmembers"] == 10
    assert patient_exposure(0.0, np.linspace(0.1, 1, 10))["rank"] < EXPOSED_RANK
    with pytest.raises(ValueError, match="at least one"):
        patient_exposure(0.5, np.array([]))


@pytest.mark.parametrize(("n", "rate"), [(8, 1 / 9), (10, 2 / 11), (3, 1 / 4), (20, 3 / 21)])
def test_chance_rate_counts_the_ranks_that_read_exposed(n, rate):
    """Exposed needs a rank of 0.9: among 8 never-trained patients only the top of 9 equally
    likely ranks (1 in 9); checked by enumerating every rank of exchangeable scores."""
    assert chance_rate(n) == pytest.approx(rate)
    scores = np.arange(n + 1, dtype=float)
    hits = sum(patient_exposure(scores[k], np.delete(scores, k))["exposed"]
               for k in range(n + 1))
    assert hits / (n + 1) == pytest.approx(rate)


def test_not_exposed_needs_an_undefended_run_that_exposed_the_patient():
    low = WhatifMembership(attack="global_loss", score=0.1, rank=0.25, nonmembers=8,
                           chance_rate=1 / 9)
    alone = membership_verdict(low)
    assert alone.colour == "gray" and "not show the patient is safe" in alone.detail
    assert "by chance 11% of the time" in alone.detail
    assert "released global model" in alone.detail and "can tell" not in alone.detail
    missed = WhatifMembership(rank=0.5, nonmembers=8, exposed=False)
    assert membership_verdict(low, missed).colour == "gray"
    exposed = WhatifMembership(rank=1.0, nonmembers=8, exposed=True)
    assert membership_verdict(low, exposed).title == "Not exposed"
    assert membership_verdict(exposed).colour == "red"


def test_patient_scores_average_each_patients_slices():
    ids = np.array(["a", "a", "b", "c", "c"])
    assert patient_scores(np.array([1.0, 3.0, 5.0, 0.0, 1.0]), ids) == {"a": 2.0, "b": 5.0,
                                                                         "c": 0.5}


def test_balanced_candidates_never_drop_the_kept_patient():
    cohort = phantom_cohort(0, centers=2, patients_per_center=4, heldout_per_center=1,
                            slices_per_patient=1, image_size=32)
    kept = cohort.centers[0].train.patients[-1]
    for seed in range(8):
        cands = membership_candidates(cohort, seed, balance=True, keep=(kept,))["center-0"]
        members = set(cands.slices.patient_ids[cands.members].tolist())
        assert members == {kept}  # one held-out patient → one member, always the kept one


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An example phantom patient of center 0 saved as NIfTI, like an upload."""
    folder = tmp_path_factory.mktemp("patients") / "1BA900"
    return save_patient_folder(example_patient_volume(0, 0, 900), folder)


def test_example_patient_round_trips_through_nifti(patient):
    volume = load_synthrad_patient(patient)
    assert volume.mri.shape == volume.ct_hu.shape == (96, 96, 32)
    assert volume.mask.mean() > 0.2
    assert -1100 < volume.ct_hu.min() < -900 and volume.ct_hu.max() > 500  # air and bone
    with pytest.raises(FileExistsError):
        save_patient_folder(example_patient_volume(0, 0, 900), patient)


def test_whatif_patient_joins_the_chosen_centers_training_set(patient):
    cfg = build_config("whatif", sets=[*TINY, f"data.whatif_patient={patient}",
                                       "data.whatif_center=2",
                                       "attacks.inversion.target_center=2"])
    cohort = load_cohort(cfg.data, cfg.seed)
    pid = whatif_patient_id(cfg.data)
    assert pid == "whatif-1BA900"
    assert cohort.centers[2].train.patients[-1] == pid
    assert len(cohort.centers[2].train.for_patient(pid)) == cfg.data.slices_per_patient
    assert all(pid not in c.train.patients for c in cohort.centers[:2])
    assert all(pid not in c.test.patients for c in cohort.centers)


@pytest.mark.parametrize(("sets", "pattern"), [
    (["data.whatif_center=3"], r"data.whatif_center = 3 does not exist; centers are 0…2"),
    (["data.whatif_patient=/no/such/folder"], r"data.whatif_patient = '/no/such/folder' is "
                                               r"not a folder"),
    (["data.whatif_center=2"], r"target_center = 0 does not attack the what-if patient's "
                               r"hospital \(data.whatif_center = 2\); set it to 2 or all"),
])
def test_bad_whatif_settings_name_the_key(patient, sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config("whatif", sets=[*TINY, f"data.whatif_patient={patient}", *sets])


def test_whatif_sweep_needs_a_patient(tmp_path):
    with pytest.raises(ConfigError, match="needs data.whatif_patient"):
        run_sweep("whatif", root=tmp_path, sets=TINY, progress=lambda _m: None)


def _sets(patient: Path, center: int) -> tuple[str, ...]:
    return (*TINY, f"data.whatif_patient={patient}", f"data.whatif_center={center}",
            f"attacks.inversion.target_center={center}")


@pytest.fixture(scope="module")
def finished(patient, tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny what-if study (both experiments) in a private runs root."""
    root = tmp_path_factory.mktemp("whatif-runs")
    folder = run_sweep("whatif", root=root, sets=_sets(patient, 1), progress=lambda _m: None)
    return root, folder


def _summaries(folder: Path) -> list[dict]:

    cells = json.loads((folder / "sweep.json").read_text())["cells"]
    return [RunFolder(folder.parent.parent / c["run_id"]).summary() for c in cells]


def test_whatif_answers_membership_and_reconstruction_for_the_patient(finished):
    plain, hardened = _summaries(finished[1])
    for s in (plain, hardened):
        w = s["whatif"]
        assert w["patient"] == "whatif-1BA900" and w["center"] == "center-1"
        m = w["membership"]
        assert 0.0 <= m["rank"] <= 1.0 and m["nonmembers"] == 3
        assert m["exposed"] == (m["rank"] >= EXPOSED_RANK)
    # Center 1 trains on 2 patients × 2 slices; the attack rebuilds as many slices as the
    # upload reports, so the patient's 2 slices are matched.
    r = plain["whatif"]["reconstruction"]
    assert r["n"] == 2 and len(r["pairs"]) == 2
    assert -1.0 <= r["ssim_body"] <= 1.0
    # Hardened: every upload masked, the round's aggregate inverted; a DP hospital reports
    # its declared size (1 patient × 2 slices), so 2 fewer slices are rebuilt than were
    # trained on and the patient's may be left unmatched.
    assert hardened["inversion"]["observed"] == "aggregate"
    assert hardened["inversion"]["calibration"]["slices"] == 2 * hardened["config"]["data"][
        "centers"]
    r = hardened["whatif"]["reconstruction"]
    assert r["n"] <= 2 and len(r["pairs"]) == r["n"]
    assert hardened["federation"]["secure_aggregation"] is True
    assert not plain["federation"]["secure_aggregation"]
    # Under secure aggregation the patient is scored by the attack the run's verdict rests
    # on (the released global model), never by FedMIA on masked uploads.
    assert hardened["whatif"]["membership"]["attack"] == "global_loss"
    assert hardened["mia"]["verdict_attack"] == "global_loss"
    assert plain["whatif"]["membership"]["attack"] == plain["mia"]["verdict_attack"]
    assert plain["whatif"]["membership"]["chance_rate"] == pytest.approx(1 / 4)
    # The leak test judges the patient's own slices against the hospital's references.
    r = plain["whatif"]["reconstruction"]
    assert r["reference_patients"] >= 100 and isinstance(r["leak"], bool)


def _page(root: Path, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(root))
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    at.switch_page(WHATIF)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "What-if: would this patient be exposed?"
    return at


def _button(at: AppTest, key: str):
    return next(b for b in at.button if b.key == key)


def test_page_without_patients_offers_an_example(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    at = _page(root, monkeypatch)
    assert any("No patient to ask about yet" in i.value for i in at.info)
    assert not any(b.key == "whatif_start" for b in at.button)
    _button(at, "whatif_example").click().run()
    assert not at.exception, at.exception
    assert (root / "whatif-examples" / "example-001" / "mr.nii.gz").is_file()
    assert [s.value for s in at.selectbox if s.label == "Patient"] == ["example-001 (example)"]
    assert [b.label for b in at.button if b.key == "whatif_start"] == ["Run the what-if"]
    # How long, for this patient's two experiments: nothing ran here, the reference figure.
    assert "Two experiments, about 16 min (on 2 quiet CPU cores" in [
        c.value[:51] for c in at.caption]


def test_page_shows_both_sides_of_a_finished_study(finished, patient, monkeypatch):

    root, _ = finished
    uploads = root / "uploads"
    uploads.mkdir(exist_ok=True)
    link = uploads / patient.name
    if not link.exists():
        link.symlink_to(patient, target_is_directory=True)
    # The page asks the tiny study for the patient as the sweep was run.
    monkeypatch.setattr(app.views.whatif, "whatif_sets", lambda p, c: _sets(patient, c))
    at = _page(root, monkeypatch)
    next(s for s in at.selectbox if s.label.startswith("Hospital")).select(1).run()
    assert not at.exception, at.exception
    subheaders = [s.value for s in at.subheader]
    assert "Without defenses" in subheaders
    assert "With secure aggregation + clipped noise" in subheaders
    text = " ".join(m.value for m in at.markdown)
    assert "Was this patient used?" in text and "rebuilt slices" in text
    assert len(at.get("plotly_chart")) == 2
    assert any(t in text for t in ("[Exposed]", "[Partly exposed]", "[Not exposed]"))
    # (MRI, rebuilt, CT, rebuilt) for every matched slice: 2 without defenses; hardened,
    # those of the patient's slices the aggregate's reconstruction matched (DP hospitals
    # report their declared size, so fewer slices are rebuilt than were trained on).
    matched = [s["whatif"]["reconstruction"]["n"] for s in _summaries(finished[1])]
    assert matched[0] == 2
    assert len(at.get("image")) == 4 * sum(matched)


@pytest.mark.parametrize(("state", "shown"), [
    ("cancelled", "Stopped after 1 of 2 experiments. Starting it again continues"),
    ("ended", "Its process ended without finishing, after 1 of 2 experiments"),
    ("failed", "Failed after 1 of 2 experiments; `"),
])
def test_a_stopped_or_broken_whatif_says_so(tmp_path, monkeypatch, state, shown):
    """A what-if stopped by its user reads as stopped (not as a failure to look up in a log);
    one that failed or whose process ended says which, and what Start again does."""
    root = tmp_path / "runs"
    at = _page(root, monkeypatch)
    _button(at, "whatif_example").click().run()
    patient = root / "whatif-examples" / "example-001"
    folder = sweep_folder("whatif", app.views.whatif.whatif_sets(patient, 0), root)
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"name": "whatif", "state": state,
                                                   "cells_done": 1, "cells": [{}, {}]}))
    at.run()
    assert not at.exception, at.exception
    said = [m.value for m in (*at.info, *at.error)]
    assert any(m.startswith(shown) for m in said), said
    assert not any("did not finish" in m for m in said)
    assert any(b.key == "whatif_start" for b in at.button)


def test_start_runs_the_study_in_the_background_and_shows_it(tmp_path, monkeypatch):


    root = tmp_path / "runs"
    monkeypatch.setattr(app.views.whatif, "whatif_sets",
                        lambda p, c: (*TINY, f"data.whatif_patient={p}",
                                      f"data.whatif_center={c}",
                                      f"attacks.inversion.target_center={c}"))
    at = _page(root, monkeypatch)
    _button(at, "whatif_example").click().run()
    _button(at, "whatif_start").click().run()
    assert not at.exception, at.exception
    [folder] = (root / "sweeps").glob("whatif-*")
    assert at.get("progress") or json.loads((folder / "sweep.json").read_text())["state"]
    deadline = time.time() + 120
    while json.loads((folder / "sweep.json").read_text()).get("state") != "done":
        assert time.time() < deadline, (folder / "log.txt").read_text()[-2000:]
        time.sleep(0.5)
    at.run()
    assert not at.exception, at.exception
    assert "With secure aggregation + clipped noise" in [s.value for s in at.subheader]
    assert not any(b.key == "whatif_start" for b in at.button)  # done: nothing to start


def test_report_of_a_whatif_run_answers_for_the_patient(finished):


    run_id = json.loads((finished[1] / "sweep.json").read_text())["cells"][0]["run_id"]
    report = make_report(finished[0] / run_id)
    assert "what-if for one patient" in report.attacks and not report.problems
    assert f"What-if: patient whatif-1BA900 at {hospital_name('center-1')}" in report.html
    membership = WhatifMembership.model_validate(_summaries(finished[1])[0]["whatif"]["membership"])
    assert f"<strong>{membership_verdict(membership).title}</strong>" in report.html
    assert "Similarity inside the head" in report.html
