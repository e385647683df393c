"""The Data & centers page: phantom preview, NIfTI upload checks, saving into a cohort folder."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.views.data import run_command
from engine.core.run_folder import ACTIVE
from engine.data.cohort import load_cohort
from engine.data.uploads import cohort_counts
from engine.orchestration.jobs import cancel_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, open_run

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
DATA = "../pages/data.py"
SHAPE = (32, 32, 8)
GZ = "application/gzip"


def _nifti(data: np.ndarray, spacing: float = 1.0, gz: bool = True) -> bytes:
    img = nib.Nifti1Image(data, np.diag([spacing, spacing, 2.0, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def head_pair(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> tuple[bytes, bytes]:
    """A ball-shaped head: MRI in scanner units (float), CT in HU with a bone shell and air."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(s) - (s - 1) / 2 for s in shape), indexing="ij")
    r = np.sqrt(x**2 + y**2 + (z * 2) ** 2)
    head, brain = r < 13, r < 10
    mri = np.where(brain, 400.0, np.where(head, 150.0, 0.0)) + rng.normal(0, 5, shape)
    ct = np.where(brain, 35.0, np.where(head, 1200.0, -1000.0)) + rng.normal(0, 5, shape)
    return _nifti(mri.astype(np.float32)), _nifti(ct.astype(np.float32))


def _image_captions(at: AppTest) -> list[str]:
    return [c for im in at.image for c in im.captions]


def _data_page() -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=120).run()
    at.switch_page(DATA).run()
    assert not at.exception, at.exception
    return at


def _upload(at: AppTest, mri: bytes, ct: bytes, names=("mri.nii.gz", "ct.nii.gz")) -> AppTest:
    # By place: a save gives the boxes fresh keys (that is how they are emptied).
    at.file_uploader[0].set_value((names[0], mri, GZ))
    at.file_uploader[1].set_value((names[1], ct, GZ))
    at.run()
    assert not at.exception, at.exception
    return at


def _save(at: AppTest, number: int) -> AppTest:
    at.number_input(key="save_number").set_value(number)
    at.button(key="save_upload").click()
    at.run()
    assert not at.exception, at.exception
    return at


def test_phantom_preview_shows_every_default_center(runs_dir: Path) -> None:
    at = _data_page()
    assert at.title[0].value == "Data & centers"
    captions = [c.value for c in at.caption]
    # One MRI above one CT per hospital, each with its scanner settings.
    assert sum("Field of view" in c for c in captions) == 4
    assert [m.value for m in at.markdown if m.value.startswith("**Hospital")] == [
        f"**Hospital {x}**" for x in "ABCD"]  # the names every other page uses
    captions = _image_captions(at)
    assert captions == ["MRI", "CT (-200 to 1000 HU)"] * 4
    assert any("scanners" in m.value for m in at.markdown)


def test_valid_upload_shows_viewer_and_facts(runs_dir: Path) -> None:
    at = _upload(_data_page(), *head_pair())
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Shape (voxels)"] == "32×32×8"
    assert metrics["Voxel size (mm)"] == "1×1×2"
    assert metrics["CT range (HU)"].startswith("-10")
    slider = at.slider(key="slice")
    assert (slider.min, slider.max, slider.value) == (1, 8, 5)  # 8 slices, counted from 1
    slider.set_value(8).run()
    assert not at.exception, at.exception
    assert _image_captions(at)[-2:] == ["MRI, slice 8 of 8",
                                        "CT, slice 8 of 8 (-200 to 1000 HU)"]


def test_broken_file_shows_a_readable_error(runs_dir: Path) -> None:
    _, ct = head_pair()
    junk = np.random.default_rng(1).bytes(4000)
    at = _upload(_data_page(), junk, ct, names=("broken.nii.gz", "ct.nii.gz"))
    assert len(at.error) == 1
    assert "cannot be used" in at.error[0].value
    assert "MRI 'broken.nii.gz'" in at.error[0].value  # the user's file, by its own name
    assert "not a NIfTI file" in at.error[0].value
    assert not at.slider  # no viewer for a broken pair


def test_gzip_truncated_file_is_reported(runs_dir: Path) -> None:
    mri, ct = head_pair()
    at = _upload(_data_page(), mri[: len(mri) // 2], ct)
    assert len(at.error) == 1 and "truncated" in at.error[0].value


def test_shape_mismatch_is_reported(runs_dir: Path) -> None:
    mri, _ = head_pair()
    _, ct = head_pair((32, 32, 10))
    at = _upload(_data_page(), mri, ct)
    assert len(at.error) == 1
    assert "not on the same voxel grid" in at.error[0].value
    assert "32×32×8" in at.error[0].value and "32×32×10" in at.error[0].value
    assert not at.slider


def test_saving_builds_a_loadable_cohort_and_refuses_overwrites(runs_dir: Path) -> None:
    folder = runs_dir / "uploads"
    at = _upload(_data_page(), *head_pair())
    # Before Save, the page says where the files will go, not that they are there.
    assert any(c.value.startswith("Will be saved as `") for c in at.caption)
    assert not (folder / "1BA001").exists()
    assert any("at most 130 MiB" in c.value and "136MB" in c.value for c in at.caption)
    at = _save(at, 1)
    assert any("Saved patient 1BA001" in s.value for s in at.success)
    assert sorted(p.name for p in (folder / "1BA001").iterdir()) == ["ct.nii.gz", "mr.nii.gz"]
    assert not at.code  # one patient is not enough to train on yet
    # The saved pair has left the session: empty boxes, no viewer, no checked volume held.
    assert [f.value for f in at.file_uploader] == [None, None, None]
    assert not at.slider and "_upload_checked" not in at.session_state

    # Saving the same patient again is refused and leaves the files alone.
    before = (folder / "1BA001" / "mr.nii.gz").stat().st_mtime_ns
    at = _save(_upload(at, *head_pair()), 1)
    assert any("already exists" in e.value for e in at.error)
    assert (folder / "1BA001" / "mr.nii.gz").stat().st_mtime_ns == before

    # A second patient of the same hospital, uploaded afresh, makes the folder trainable.
    at = _upload(at, *head_pair(seed=1))
    at.selectbox(key="save_center").set_value("Uploaded hospital A")
    at = _save(at, 2)
    assert cohort_counts(folder) == {"A": 2}
    command = at.code[0].value
    assert "--set data.source=nifti" in command and f"data.path={folder}" in command

    # The button trains the same federation as the command, through the job queue.
    at.button(key="train_cohort").click().run()
    assert not at.exception, at.exception
    run = open_run(next(r["run_id"] for r in RunIndex(runs_dir).list()
                        if r["name"] == "uploaded-cohort"))
    try:
        cfg = run.config()
        assert run.status().state in ACTIVE
    finally:
        cancel_job(run, grace_s=0)
    assert (cfg.data.source, cfg.data.path, cfg.data.centers) == ("nifti", str(folder), 1)
    assert (cfg.data.patients_per_center, cfg.data.heldout_per_center) == (1, 1)
    assert cfg == build_config("smoke", sets=[x.strip() for x in command.split("--set ")[1:]])
    cohort = load_cohort(cfg.data, seed=0)
    assert [c.name for c in cohort.centers] == ["center-A"]
    assert cohort.centers[0].train.mri.shape == (cfg.data.slices_per_patient, 1, 32, 32)
    assert set(cohort.centers[0].test.patient_ids) == {"1BA002"}


def test_mask_is_saved_and_new_hospital_gets_next_letter(runs_dir: Path) -> None:
    mri, ct = head_pair()
    x, y, z = np.meshgrid(*(np.arange(s) - (s - 1) / 2 for s in SHAPE), indexing="ij")
    mask = _nifti((np.sqrt(x**2 + y**2 + (z * 2) ** 2) < 13).astype(np.uint8))
    at = _data_page()
    at.file_uploader[2].set_value(("mask.nii.gz", mask, GZ))
    at = _upload(at, mri, ct)
    at = _save(at, 7)
    assert (runs_dir / "uploads" / "1BA007" / "mask.nii.gz").is_file()
    at = _upload(at, mri, ct)  # the next patient
    assert at.selectbox(key="save_center").options == ["Uploaded hospital A",
                                                       "New uploaded hospital B"]


@pytest.mark.parametrize(("counts", "usable"), [({"A": 1}, False), ({"A": 2, "B": 3}, True),
                                                ({"A": 2, "B": 1}, False)])
def test_run_command_needs_two_patients_everywhere(counts, usable, tmp_path: Path) -> None:
    cmd = run_command(tmp_path, counts)
    assert (cmd is not None) == usable
    if usable:
        assert "data.centers=2" in cmd and "data.patients_per_center=1" in cmd


def test_synthrad_path_check(runs_dir: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSCT_DATA_ROOTS", f"{tmp_path / 'elsewhere'}:{tmp_path / 'data'}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "escape").symlink_to("/etc")
    at = _data_page()
    at.text_input(key="synthrad_path").set_value(str(tmp_path / "data" / "missing")).run()
    assert not at.exception, at.exception
    assert any("does not exist" in w.value for w in at.warning)
    # Outside the data roots: one refusal, the same whether the folder exists or not.
    refusals = []
    for outside in ("/etc", "/no/such/folder", f"{tmp_path}/data/../..",
                    f"{tmp_path}/data/escape", "~root"):
        at.text_input(key="synthrad_path").set_value(outside).run()
        assert not at.exception and not at.success, outside
        refusals.append([w.value for w in at.warning])
    assert all(r == refusals[0] for r in refusals) and len(refusals[0]) == 1, refusals
    assert "only reads data inside" in refusals[0][0] and "FEDSCT_DATA_ROOTS" in refusals[0][0]
    assert str(tmp_path / "data") in refusals[0][0]
    root = tmp_path / "data" / "brain"
    for pid in ("1BA001", "1BB001"):
        (root / pid).mkdir(parents=True)
        for stem, data in zip(("mr", "ct"), head_pair(), strict=True):
            (root / pid / f"{stem}.nii.gz").write_bytes(data)
    at.text_input(key="synthrad_path").set_value(str(root)).run()
    assert any("hospital A: 1 patients" in s.value for s in at.success)
    # A patient folder, or a file in one, that links outside the data roots is refused.
    outside = tmp_path / "outside" / "1BC001"
    outside.mkdir(parents=True)
    for stem, data in zip(("mr", "ct"), head_pair(), strict=True):
        (outside / f"{stem}.nii.gz").write_bytes(data)
    (root / "1BC001").symlink_to(outside)
    at.text_input(key="synthrad_path").set_value(str(root) + "/").run()
    assert not at.success and any("1BC001/ links outside the folders the dashboard may read"
                                  in w.value for w in at.warning)
    (root / "1BC001").unlink()
    (root / "1BB001" / "ct.nii.gz").unlink()
    (root / "1BB001" / "ct.nii.gz").symlink_to(outside / "ct.nii.gz")
    at.text_input(key="synthrad_path").set_value(str(root)).run()
    assert any("1BB001/ct.nii.gz links outside" in w.value for w in at.warning)


def test_uncompressed_nii_is_accepted(runs_dir: Path) -> None:
    mri, ct = head_pair()
    at = _upload(_data_page(), gzip.decompress(mri), gzip.decompress(ct),
                 names=("mri.nii", "ct.nii"))
    assert not at.error and at.slider


@pytest.mark.parametrize("letter", ["AB", "", "a", "1"])
def test_a_hospital_is_one_capital_letter(tmp_path: Path, letter: str) -> None:
    """'AB' is not hospital A (it was written as patient 1BAB001)."""
    from engine.data.uploads import save_patient as save

    with pytest.raises(ValueError, match="out of range"):
        save(tmp_path, letter, 1, None, None, with_mask=False)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_refused_upload_is_not_read_again_on_every_rerun(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdict on a pair is cached, a refusal as well as a volume: a page rerun (any
    click) does not read a refused 130 MiB upload again."""
    import app.data

    reads = []
    real = app.data.load_nifti_pair
    monkeypatch.setattr(app.data, "load_nifti_pair",
                        lambda *a, **k: reads.append(1) or real(*a, **k))
    _, ct = head_pair()
    junk = np.random.default_rng(7).bytes(5000)  # not checked by any earlier test
    at = _upload(_data_page(), junk, ct, names=("refused.nii.gz", "ct.nii.gz"))
    assert "cannot be used" in at.error[0].value and len(reads) == 1
    at.run()
    at.run()
    assert "cannot be used" in at.error[0].value and len(reads) == 1
