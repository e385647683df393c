"""Hardened NIfTI loading and the SynthRAD2023 layout, with real nibabel files."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.data.nifti import (
    NiftiError,
    NiftiLimits,
    load_affine,
    load_nifti_pair,
    load_volume,
    save_patient_folder,
)
from engine.data.preprocess import volume_to_slices
from engine.data.synthrad import load_synthrad_patient, scan_synthrad
from engine.data.types import PatientVolume

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
SHAPE = (24, 24, 16)
SPACING = (1.0, 1.0, 2.0)


def _affine(shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = np.array([-12.0, -12.0, -16.0]) + np.asarray(shift)
    return aff


def _head(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sphere "head": CT air −1000, soft tissue 40, bone shell 1200; MRI with contrast."""
    idx = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    scale = np.array([1.0, 1.0, SPACING[2]], np.float32)[:, None, None, None]
    r = np.sqrt((((idx - centre[:, None, None, None]) * scale) ** 2).sum(axis=0))
    inside, brain = r < 10.5, r < 8.5
    ct = np.full(shape, -1000.0, np.float32)
    ct[inside] = 1200.0
    ct[brain] = 40.0
    mri = np.zeros(shape, np.float32)
    mri[inside] = 30.0
    mri[brain] = 100.0 + 5.0 * np.sin(idx[0][brain])
    return mri, ct, inside.astype(np.uint8)


def _save(
    arr: np.ndarray,
    path: Path,
    affine: np.ndarray | None = None,
    klass: type = nib.Nifti1Image,
    dtype: type | None = None,
) -> Path:
    img = klass(
        arr if dtype is None else arr.astype(dtype), _affine() if affine is None else affine
    )
    nib.save(img, path)
    return path


def _pair(tmp_path: Path, suffix: str = ".nii.gz") -> tuple[Path, Path, Path]:
    mri, ct, mask = _head()
    return (
        _save(mri, tmp_path / f"mr{suffix}"),
        _save(ct, tmp_path / f"ct{suffix}", dtype=np.int16),
        _save(mask, tmp_path / f"mask{suffix}"),
    )


# --------------------------------------------------------------------------- real files


def test_anatomical_loads_as_ras_and_matches_nibabel() -> None:
    path = NIB_DATA / "anatomical.nii"
    assert nib.aff2axcodes(nib.load(path).affine) == ("L", "A", "S")  # the test is meaningful
    data, affine = load_volume(path)
    assert data.shape == (33, 41, 25) and data.dtype == np.float32
    assert affine.dtype == np.float64 and affine.shape == (4, 4)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    ref = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(data, ref.get_fdata())
    np.testing.assert_allclose(affine, ref.affine)


def test_example4d_is_refused() -> None:
    with pytest.raises(NiftiError, match=r"example4d\.nii\.gz.*4-D \(shape 128×96×24×2\)"):
        load_volume(NIB_DATA / "example4d.nii.gz")


# --------------------------------------------------------------------------- valid pairs


def test_valid_pair_gives_patient_volume_and_slices(tmp_path: Path) -> None:
    mr, ct, mask = _pair(tmp_path)
    vol = load_nifti_pair(mr, ct, mask, patient_id="P001")
    assert isinstance(vol, PatientVolume) and vol.patient_id == "P001"
    assert vol.mri.shape == vol.ct_hu.shape == vol.mask.shape == SHAPE
    assert vol.mri.dtype == np.float32 and vol.ct_hu.dtype == np.float32
    assert vol.mask.dtype == bool
    assert vol.spacing_mm == pytest.approx(SPACING)
    assert vol.ct_hu.min() == -1000.0 and vol.ct_hu.max() == 1200.0
    slices = volume_to_slices(vol, image_size=32, n_slices=4)
    assert slices.mri.shape == (4, 1, 32, 32) and set(slices.patient_ids) == {"P001"}


def test_mask_is_derived_from_ct_when_absent(tmp_path: Path) -> None:
    mr, ct, mask = _pair(tmp_path)
    given = load_nifti_pair(mr, ct, mask, patient_id="P")
    derived = load_nifti_pair(mr, ct, patient_id="P")
    assert derived.mask.dtype == bool
    # Sphere with bone shell: CT > −500 is exactly the sphere, holes filled, nothing outside.
    np.testing.assert_array_equal(derived.mask, given.mask)


def test_derived_mask_keeps_largest_component_and_fills_holes(tmp_path: Path) -> None:
    mri, ct, _ = _head()
    ct[12, 12, 8] = -1000.0  # air pocket inside the head (a sinus)
    ct[0, 0, :3] = 40.0  # a small separate object (couch, noise)
    mr, ctp = _save(mri, tmp_path / "mr.nii"), _save(ct, tmp_path / "ct.nii")
    vol = load_nifti_pair(mr, ctp, patient_id="P")
    assert vol.mask[12, 12, 8] and not vol.mask[0, 0, :3].any()


def test_bytes_input_equals_path(tmp_path: Path) -> None:
    mr, ct, mask = _pair(tmp_path)
    from_path = load_nifti_pair(mr, ct, mask, patient_id="P")
    from_bytes = load_nifti_pair(
        mr.read_bytes(), ct.read_bytes(), mask.read_bytes(), patient_id="P"
    )
    for field in ("mri", "ct_hu", "mask"):
        np.testing.assert_array_equal(getattr(from_path, field), getattr(from_bytes, field))
    assert from_path.spacing_mm == from_bytes.spacing_mm
    d1, a1 = load_volume(NIB_DATA / "anatomical.nii")
    d2, a2 = load_volume((NIB_DATA / "anatomical.nii").read_bytes(), name="anat upload")
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(a1, a2)


def test_gzip_detected_by_magic_not_extension(tmp_path: Path) -> None:
    mri, _, _ = _head()
    real_gz = _save(mri, tmp_path / "a.nii.gz")
    fake_nii = tmp_path / "gz_named.nii"
    fake_nii.write_bytes(real_gz.read_bytes())
    raw = _save(mri, tmp_path / "b.nii")
    fake_gz = tmp_path / "raw_named.nii.gz"
    fake_gz.write_bytes(raw.read_bytes())
    assert fake_nii.read_bytes()[:2] == b"\x1f\x8b" and fake_gz.read_bytes()[:2] != b"\x1f\x8b"
    for path in (fake_nii, fake_gz):
        data, _ = load_volume(path)
        np.testing.assert_array_equal(data, mri)


def test_nifti2_loads(tmp_path: Path) -> None:
    mri, _, _ = _head()
    path = _save(mri, tmp_path / "mr2.nii", klass=nib.Nifti2Image)
    assert struct.unpack("<i", path.read_bytes()[:4])[0] == 540
    data, affine = load_volume(path)
    np.testing.assert_array_equal(data, mri)
    np.testing.assert_allclose(affine, _affine())


def test_trailing_singleton_dim_is_squeezed(tmp_path: Path) -> None:
    mri, _, _ = _head()
    data, _ = load_volume(_save(mri[..., None], tmp_path / "mr4.nii"))
    assert data.shape == SHAPE


def test_las_pair_comes_out_ras(tmp_path: Path) -> None:
    mri, ct, mask = _head()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0]) @ _affine()
    flip[0, 3] = 11.0
    paths = [
        _save(a[::-1], tmp_path / f"{n}.nii", affine=flip)
        for n, a in (("mr", mri), ("ct", ct), ("mask", mask))
    ]
    vol = load_nifti_pair(*paths, patient_id="P")
    np.testing.assert_array_equal(vol.mri, mri)
    np.testing.assert_array_equal(vol.mask, mask.astype(bool))


def test_ct_raw_values_with_rescale_intercept_are_accepted(tmp_path: Path) -> None:
    mri, ct, _ = _head()
    img = nib.Nifti1Image((ct + 1024).astype(np.uint16), _affine())
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "ct.nii")
    vol = load_nifti_pair(_save(mri, tmp_path / "mr.nii"), tmp_path / "ct.nii", patient_id="P")
    assert vol.ct_hu.min() == -1000.0


def test_header_free_text_never_reaches_the_result(tmp_path: Path) -> None:
    fake = "DOE^JOHN"
    mri, ct, mask = _head()
    paths = []
    for name, arr in (("mr", mri), ("ct", ct), ("mask", mask)):
        img = nib.Nifti1Image(arr, _affine())
        img.header["descrip"] = fake.encode()
        img.header["aux_file"] = b"JOHN"
        img.header["intent_name"] = b"DOE"
        img.header["db_name"] = b"DOEJOHN"
        nib.save(img, tmp_path / f"{name}.nii")
        paths.append(tmp_path / f"{name}.nii")
    assert fake.encode() in paths[0].read_bytes()
    vol = load_nifti_pair(*paths, patient_id="anon-1")
    assert "DOE" not in repr(vol) and "JOHN" not in repr(vol)
    for f in dataclasses.fields(vol):
        value = getattr(vol, f.name)
        assert not isinstance(value, np.ndarray) or value.dtype != object
        assert "DOE" not in str(value) and "JOHN" not in str(value)
    assert vol.patient_id == "anon-1"


# --------------------------------------------------------------------------- refusals


def test_truncated_files(tmp_path: Path) -> None:
    mri, _, _ = _head()
    raw = _save(mri, tmp_path / "full.nii").read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[:-100])
    with pytest.raises(NiftiError, match=r"'cut\.nii'.*truncated.*transfer the file again"):
        load_volume(cut)
    cut_gz = tmp_path / "cut.nii.gz"
    cut_gz.write_bytes(gzip.compress(raw)[:-50])
    with pytest.raises(NiftiError, match=r"'cut\.nii\.gz'.*gzip stream is truncated"):
        load_volume(cut_gz)
    header_only = tmp_path / "hdr.nii"
    header_only.write_bytes(raw[:200])
    with pytest.raises(NiftiError, match=r"'hdr\.nii'.*truncated inside its 348-byte header"):
        load_volume(header_only)


def test_garbage_bytes(tmp_path: Path) -> None:
    junk = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    with pytest.raises(NiftiError, match=r"'upload\.nii'.*not a NIfTI file"):
        load_volume(junk, name="upload.nii")
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(junk))
    with pytest.raises(NiftiError, match=r"'junk\.nii\.gz'.*not a NIfTI file"):
        load_volume(path)
    path.write_bytes(b"\x1f\x8b" + junk)  # gzip magic, corrupt stream
    with pytest.raises(NiftiError, match=r"'junk\.nii\.gz'.*gzip stream is truncated or corrupt"):
        load_volume(path)
    with pytest.raises(NiftiError, match=r"'empty'.*empty"):
        load_volume(b"", name="empty")


def test_gzip_bomb_is_stopped_at_the_size_its_header_declares(tmp_path: Path) -> None:
    small = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), _affine()).to_bytes()
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(small + bytes(16 * 1024**2), compresslevel=1))
    assert bomb.stat().st_size < 100_000
    pattern = (
        r"'bomb\.nii\.gz'.*decompresses to more than the 1,376 bytes its header declares "
        r"\(8×8×8 int16 voxels after 352 bytes\).*bomb"
    )
    with pytest.raises(NiftiError, match=pattern):
        load_volume(bomb)
    # Trailing bytes are refused too, uncompressed or gzip, however few.
    with pytest.raises(NiftiError, match=r"'x': decompresses to more than the 1,376 bytes"):
        load_volume(gzip.compress(small + b"\0"), name="x")
    with pytest.raises(NiftiError, match=r"'x': file is 1,377 bytes but its header declares 1,376"):
        load_volume(small + b"\0", name="x")


def test_header_size_claims_are_checked_before_reading(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((400, 400, 400))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    hdr["magic"] = b"n+1"
    claim = tmp_path / "claim.nii"
    claim.write_bytes(hdr.binaryblock + bytes(4))  # header only: data never read
    with pytest.raises(NiftiError, match=r"'claim\.nii'.*header promises .* more than"):
        load_volume(claim, limits=NiftiLimits(max_voxels=10**9,
                                              max_decompressed_bytes=64 * 1024**2))
    with pytest.raises(NiftiError, match=r"'claim\.nii'.*64,000,000 voxels.*crop or resample"):
        load_volume(claim, limits=NiftiLimits(max_voxels=1_000_000))
    # The default limit is 256³ voxels and says so.
    with pytest.raises(NiftiError, match=r"more than the 16,777,216 \(256³\) allowed"):
        load_volume(claim)


def test_file_size_limit(tmp_path: Path) -> None:
    mri, _, _ = _head()
    path = _save(mri, tmp_path / "big.nii")
    with pytest.raises(NiftiError, match=r"'big\.nii'.*more than the 1\.0 KiB allowed"):
        load_volume(path, limits=NiftiLimits(max_file_bytes=1024))


def test_default_limits_are_stated_in_the_refusal(tmp_path: Path) -> None:
    limits = NiftiLimits()
    assert limits.max_voxels == 256**3 and limits.max_file_bytes == 130 * 1024**2
    big = tmp_path / "big.nii.gz"
    with big.open("wb") as f:
        f.truncate(131 * 1024**2)  # sparse: nothing is written, nothing is read
    with pytest.raises(NiftiError, match=r"'big\.nii\.gz'.*131\.0 MiB, more than the 130\.0 MiB "
                       r"allowed.*16,777,216 \(256³\) voxels"):
        load_volume(big)


def test_load_affine_reads_only_the_header() -> None:
    raw = (NIB_DATA / "anatomical.nii").read_bytes()
    _, affine = load_volume(raw, name="anat")
    np.testing.assert_array_equal(load_affine(raw[:352], name="anat"), affine)  # no voxels


def test_save_patient_folder_is_all_or_nothing(tmp_path: Path) -> None:
    mri, ct, mask = _head()
    pv = PatientVolume("P", mri, ct, mask.astype(bool), SPACING)
    target = save_patient_folder(pv, tmp_path / "cohort" / "1BA001")
    assert sorted(p.name for p in target.iterdir()) == ["ct.nii.gz", "mask.nii.gz", "mr.nii.gz"]
    with pytest.raises(FileExistsError, match="1BA001"):
        save_patient_folder(pv, target)
    assert [p.name for p in target.parent.iterdir()] == ["1BA001"]  # no temporary left
    np.testing.assert_array_equal(load_nifti_pair(target / "mr.nii.gz", target / "ct.nii.gz",
                                                  patient_id="P").ct_hu, ct)


def test_huge_header_extensions(tmp_path: Path) -> None:
    mri, _, _ = _head()
    raw = bytearray(_save(mri, tmp_path / "ok.nii").read_bytes())
    raw[108:112] = struct.pack("<f", 352 + 50 * 1024**2)  # vox_offset far beyond 352
    path = tmp_path / "voxoff.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match=r"'voxoff\.nii'.*header extensions take 50\.0 MiB"):
        load_volume(path)

    img = nib.Nifti1Image(mri, _affine())
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * (2 * 1024**2)))
    nib.save(img, tmp_path / "ext.nii")
    with pytest.raises(NiftiError, match=r"'ext\.nii'.*extensions take 2\.0 MiB.*strip"):
        load_volume(tmp_path / "ext.nii")

    # Small extension area whose chain claims an impossible size.
    img = nib.Nifti1Image(mri, _affine())
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"y" * 24))
    good = bytearray(img.to_bytes())
    good[352:356] = struct.pack("<i", 10_000)
    with pytest.raises(NiftiError, match=r"'esize'.*extension at byte 352 has an invalid size"):
        load_volume(bytes(good), name="esize")


def test_small_valid_extension_is_fine(tmp_path: Path) -> None:
    mri, _, _ = _head()
    img = nib.Nifti1Image(mri, _affine())
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment"))
    data, _ = load_volume(img.to_bytes(), name="ext")
    np.testing.assert_array_equal(data, mri)


def test_mutated_headers_fail_only_with_nifti_error() -> None:
    """Random header corruption must never leak a nibabel/numpy/zlib exception."""
    rng = np.random.default_rng(7)
    limits = NiftiLimits(max_decompressed_bytes=8 * 1024**2)
    bases = [
        klass(rng.normal(size=(8, 8, 6)).astype(np.float32), _affine()).to_bytes()
        for klass in (nib.Nifti1Image, nib.Nifti2Image)
    ]
    for i in range(400):
        blob = bytearray(bases[i % 2])
        for pos in rng.integers(0, 560, size=3):
            blob[int(pos)] = int(rng.integers(0, 256))
        try:
            load_volume(bytes(blob), name="fuzz", limits=limits)
        except NiftiError as exc:
            assert str(exc).startswith("'fuzz': ")


def test_nan_values(tmp_path: Path) -> None:
    mri, _, _ = _head()
    mri[1, 2, 3] = np.nan
    mri[4, 5, 6] = np.inf
    mri[7, 8, 9] = np.nan
    with pytest.raises(NiftiError, match=r"'nan\.nii'.*contains 3 NaN/infinite"):
        load_volume(_save(mri, tmp_path / "nan.nii"))


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ("raw", r"CT values range 0…4095.*expected Hounsfield units.*rescale slope/intercept"),
        ("unit", r"CT values range 0…1 .*expected Hounsfield units"),
        ("flat", r"CT values range -1000….*1st–99th percentile"),
    ],
)
def test_ct_not_in_hu(tmp_path: Path, values: str, pattern: str) -> None:
    mri, ct, _ = _head()
    if values == "raw":
        bad = np.clip(ct + 1024, 0, 4095)
        bad[0, 0, 0] = 0
        bad[1, 1, 1] = 4095
    elif values == "unit":
        bad = (ct + 1000) / 2200
    else:  # z-scored-like: essentially no contrast, a single air voxel
        bad = np.where(ct > 0, 1.0, 0.0).astype(np.float32)
        bad[0, 0, 0] = -1000.0
    mr, ctp = _save(mri, tmp_path / "mr.nii"), _save(bad, tmp_path / "ct.nii")
    with pytest.raises(NiftiError, match=r"CT 'ct\.nii'.*" + pattern):
        load_nifti_pair(mr, ctp, patient_id="P")


def test_ct_with_minus_1024_background_is_accepted(tmp_path: Path) -> None:
    mri, ct, _ = _head()
    ct[ct == -1000] = -1024
    vol = load_nifti_pair(
        _save(mri, tmp_path / "mr.nii"), _save(ct, tmp_path / "ct.nii"), patient_id="P"
    )
    assert vol.ct_hu.min() == -1024


def test_swapped_mri_and_ct(tmp_path: Path) -> None:
    mr, ct, _ = _pair(tmp_path)
    with pytest.raises(NiftiError, match=r"MRI 'ct\.nii\.gz'.*looks like a CT.*swapped"):
        load_nifti_pair(ct, mr, patient_id="P")


def test_shape_mismatch(tmp_path: Path) -> None:
    mri, _, _ = _head()
    _, ct, _ = _head((24, 24, 18))
    mr, ctp = _save(mri, tmp_path / "mr.nii"), _save(ct, tmp_path / "ct.nii")
    with pytest.raises(
        NiftiError,
        match=r"CT 'ct\.nii'.*not on the same voxel grid.*shape 24×24×16 at 1\.00×1\.00×2\.00 mm"
        r".*shape 24×24×18.*Resample the CT onto the MRI grid",
    ):
        load_nifti_pair(mr, ctp, patient_id="P")


def test_affine_mismatch(tmp_path: Path) -> None:
    mri, ct, mask = _head()
    mr = _save(mri, tmp_path / "mr.nii")
    far = _save(ct, tmp_path / "ct_far.nii", affine=_affine((10.0, 0.0, 0.0)))
    with pytest.raises(NiftiError, match=r"'ct_far\.nii'.*origins differ by 10\.0 mm.*Resample"):
        load_nifti_pair(mr, far, patient_id="P")
    near = _save(ct, tmp_path / "ct_near.nii", affine=_affine((1.0, 0.0, 0.0)))
    assert load_nifti_pair(mr, near, patient_id="P").ct_hu.shape == SHAPE
    scaled = np.diag([1.0, 1.0, 2.5, 1.0])
    scaled[:3, 3] = _affine()[:3, 3]
    ct_sc = _save(ct, tmp_path / "ct_sc.nii", affine=scaled)
    with pytest.raises(NiftiError, match=r"'ct_sc\.nii'.*orientation or voxel size differ"):
        load_nifti_pair(mr, ct_sc, patient_id="P")
    ok_ct = _save(ct, tmp_path / "ct.nii")
    moved_mask = _save(mask, tmp_path / "mask.nii", affine=_affine((0.0, 5.0, 0.0)))
    with pytest.raises(NiftiError, match=r"mask 'mask\.nii'.*Resample the mask onto the MRI"):
        load_nifti_pair(mr, ok_ct, moved_mask, patient_id="P")


def test_non_binary_mask(tmp_path: Path) -> None:
    mri, ct, mask = _head()
    mr, ctp = _save(mri, tmp_path / "mr.nii"), _save(ct, tmp_path / "ct.nii")
    soft = _save(mask * 0.7, tmp_path / "soft.nii")
    with pytest.raises(NiftiError, match=r"mask 'soft\.nii'.*must be binary.*0, 0\.7"):
        load_nifti_pair(mr, ctp, soft, patient_id="P")
    labels = _save(mask * 255, tmp_path / "labels.nii", dtype=np.uint8)
    with pytest.raises(NiftiError, match=r"'labels\.nii'.*must be binary.*255"):
        load_nifti_pair(mr, ctp, labels, patient_id="P")
    empty = _save(mask * 0, tmp_path / "empty.nii")
    with pytest.raises(NiftiError, match=r"'empty\.nii'.*mask is empty"):
        load_nifti_pair(mr, ctp, empty, patient_id="P")
    boolean = _save(mask, tmp_path / "bool.nii", dtype=np.uint8)
    assert load_nifti_pair(mr, ctp, boolean, patient_id="P").mask.sum() == mask.sum()


def test_two_d_image(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.ones((24, 24), np.float32), np.eye(4))
    nib.save(img, tmp_path / "slice.nii")
    with pytest.raises(NiftiError, match=r"'slice\.nii'.*is 2-D \(shape 24×24\).*3-D volume"):
        load_volume(tmp_path / "slice.nii")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match=r"'nope\.nii\.gz'.*file not found"):
        load_volume(tmp_path / "nope.nii.gz")


# --------------------------------------------------------------------------- SynthRAD


def _synthrad_root(tmp_path: Path) -> Path:
    root = tmp_path / "Task1" / "brain"
    mri, ct, mask = _head((16, 16, 12))
    for pid in ("1BA001", "1BB002", "1BC003"):
        folder = root / pid
        folder.mkdir(parents=True)
        _save(mri, folder / "mr.nii.gz")
        _save(ct, folder / "ct.nii.gz", dtype=np.int16)
        _save(mask, folder / "mask.nii.gz", dtype=np.uint8)
    (root / "overview").mkdir()
    (root / "overview" / "notes.txt").write_text("not a patient")
    return root


def test_synthrad_scan_and_load(tmp_path: Path) -> None:
    root = _synthrad_root(tmp_path)
    centers = scan_synthrad(root)
    assert {k: [p.name for p in v] for k, v in centers.items()} == {
        "A": ["1BA001"],
        "B": ["1BB002"],
        "C": ["1BC003"],
    }
    vol = load_synthrad_patient(centers["B"][0])
    assert vol.patient_id == "1BB002" and vol.mri.shape == (16, 16, 12)
    assert vol.mask.dtype == bool and vol.ct_hu.dtype == np.float32
    (centers["C"][0] / "mask.nii.gz").unlink()  # mask is optional
    assert load_synthrad_patient(centers["C"][0]).mask.any()


def test_synthrad_missing_files_and_root(tmp_path: Path) -> None:
    root = _synthrad_root(tmp_path)
    (root / "1BA001" / "ct.nii.gz").unlink()
    with pytest.raises(NiftiError, match=r"'1BA001' lacks ct\.nii\.gz.*needs mr\.nii\.gz"):
        load_synthrad_patient(root / "1BA001")
    with pytest.raises(NiftiError, match=r"1BA001 lacks ct\.nii\.gz"):
        scan_synthrad(root)
    with pytest.raises(NiftiError, match=r"does not exist.*1BA001"):
        scan_synthrad(tmp_path / "missing")
    with pytest.raises(NiftiError, match=r"holds no patient folder.*did you mean"):
        scan_synthrad(tmp_path / "Task1")
