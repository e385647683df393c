"""Hardened NIfTI loading for paired MRI/CT volumes (paths or in-memory uploads).

Everything a user uploads is untrusted: files may be gzip bombs, truncated, carry megabytes of
header extensions, be 4-D, be stored in raw scanner units, or hold patient names in free-text
header fields. This module turns all of those into a :class:`NiftiError` whose message names the
file, says what is wrong and how to fix it, and never leaks a nibabel/zlib traceback.

Output convention: volumes are ``(X, Y, Z)`` float32 in canonical RAS voxel order (nibabel's
``as_closest_canonical``), affines are 4×4 float64 in millimetres.

Resource bounds (the defaults of :class:`NiftiLimits`): at most 256×256×256 = 16,777,216 voxels
per volume, stored with at most 8 bytes per voxel after at most 1 MiB of header extensions, so
no acceptable file is larger than 130 MiB, compressed or not; larger files are refused with
that limit in the message (for uploads, the dashboard's transfer cap,
``app.views.data.MAX_UPLOAD_MB``, is set just above it). The header is read and checked first;
the voxels are then decompressed as a stream, converted to float32 piece by piece, and refused
the moment the stream yields more bytes than the header declares. So a volume costs its float32
voxels (at most 64 MiB) plus about 15 MiB of buffers (77 MiB measured for a 256³ float64 file,
see ``benchmarks/nifti_limits.py``), and a decompression bomb costs no more than the largest
honest volume.

The parts: :mod:`engine.data.nifti_stream` (limits, errors, the bounded byte stream),
:mod:`engine.data.nifti_header` (the header's checks and the voxels' decoding) and this
module (the loaders and saving); import the public names from here.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from engine.data.nifti_header import _decode, _parse_header, _read_header
from engine.data.nifti_stream import (
    _HEAD_BYTES,
    DEFAULT_LIMITS,
    NiftiError,
    NiftiLimits,
    Source,
    _fmt_shape,
    _fmt_spacing,
    _spacing,
    _Stream,
)
from engine.data.types import PatientVolume


def _load(source: Source, label: str, limits: NiftiLimits) -> tuple[np.ndarray, np.ndarray]:
    with _Stream(source, label, limits) as stream:
        info = _read_header(stream, label, limits)
        try:
            data = _decode(stream, info, label)
        except MemoryError:
            raise NiftiError(
                f"{label}: not enough memory for {info.describe()}; crop or resample the "
                f"volume to fewer voxels first"
            ) from None
    return data, info.affine


def _label_for(source: Source, name: str) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"'{name}'"
    return f"'{Path(source).name}'"


def load_volume(
    path: Source, *, name: str = "volume", limits: NiftiLimits = DEFAULT_LIMITS
) -> tuple[np.ndarray, np.ndarray]:
    """Load one 3-D NIfTI-1/NIfTI-2 volume, gzip or not, from a path or raw bytes.

    Args:
        path: file path, or the file's bytes (e.g. a Streamlit upload). Gzip is detected from
            the magic bytes, so the extension does not matter.
        name: how to call the file in error messages when ``path`` is bytes (a path's
            basename is used otherwise).
        limits: resource limits (file size, voxels, decompressed bytes, header extensions);
            by default 256³ voxels and 130 MiB, see :class:`NiftiLimits`.

    Returns:
        ``(data, affine)``: data ``(X, Y, Z)`` float32 in canonical RAS voxel order with
        scl_slope/scl_inter applied; affine ``(4, 4)`` float64 voxel → world (mm) of the
        canonical image.

    Raises:
        NiftiError: anything unusable (corrupt, truncated, bomb, too large, trailing data,
            2-D/4-D, NaN/inf, …).
    """
    return _load(path, _label_for(path, name), limits)


def load_affine(
    path: Source, *, name: str = "volume", limits: NiftiLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """The canonical voxel → world affine that :func:`load_volume` would return, read from the
    header alone (the voxels are neither decompressed nor checked).

    Raises:
        NiftiError: the header is unusable (see :func:`load_volume`).
    """
    label = _label_for(path, name)
    with _Stream(path, label, limits) as stream:
        return _parse_header(bytes(stream.read(_HEAD_BYTES)), label, limits).affine


def _sample(a: np.ndarray) -> np.ndarray:
    """Strided subsample of ≤ ~2 M voxels: percentiles need no more and 512³ would be slow."""
    flat = a.ravel()
    return flat[:: max(1, flat.size // 2_000_000)]


def _check_ct_is_hu(ct: np.ndarray, label: str) -> None:
    """Refuse CTs that do not look like Hounsfield units.

    Rule (robust to metal and to −1024/−2048/−3024 padding outside the field of view):

    * some voxel must be ≤ −500 HU: every head CT contains air (around the head, in sinuses),
      which is ≈ −1000 HU; a minimum above −500 means unsigned raw values (0…4095), a
      normalised [0, 1] volume, or a CT without air;
    * not (1st percentile > −200 and 99th percentile < 200): no air/bone contrast means the
      volume was normalised or is not a CT;
    * 99th percentile ≤ 4000 HU: cortical bone is ≈ 1700–3000 HU, so more than 1 % of voxels
      above 4000 means raw or rescaled values.
    """
    p1, p99 = (float(v) for v in np.percentile(_sample(ct), [1, 99]))
    lo, hi = float(ct.min()), float(ct.max())
    looks_hu = lo <= -500.0 and not (p1 > -200.0 and p99 < 200.0) and p99 <= 4000.0
    if not looks_hu:
        raise NiftiError(
            f"{label}: CT values range {lo:g}…{hi:g} (1st–99th percentile {p1:g}…{p99:g}); "
            f"expected Hounsfield units with air near −1000 HU. If the scanner stores raw "
            f"values, apply the rescale slope/intercept (HU = raw × slope + intercept, often "
            f"intercept −1024) or set scl_slope/scl_inter in the header; if the CT was "
            f"normalised, export the original HU volume"
        )


def _check_same_grid(
    ref: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    ref_label: str,
    other_label: str,
    max_mm: float,
) -> None:
    """Both volumes must share one voxel grid: the networks pair voxels, not world points."""
    (a, aff_a), (b, aff_b) = ref, other
    problem = ""
    if a.shape != b.shape:
        problem = "shapes differ"
    else:
        shift = float(np.linalg.norm(aff_a[:3, 3] - aff_b[:3, 3]))
        rot = float(np.max(np.abs(aff_a[:3, :3] - aff_b[:3, :3])))
        if shift > max_mm:
            problem = f"origins differ by {shift:.1f} mm, more than the {max_mm:g} mm allowed"
        elif rot > 1e-3:
            problem = f"orientation or voxel size differ, max affine difference {rot:.3g}"
    if problem:
        raise NiftiError(
            f"{other_label} and {ref_label} are not on the same voxel grid ({problem}): "
            f"{ref_label} has shape {_fmt_shape(a.shape)} at {_fmt_spacing(aff_a)}, "
            f"{other_label} has shape {_fmt_shape(b.shape)} at {_fmt_spacing(aff_b)}. Resample "
            f"the {other_label.split()[0]} onto the MRI grid (e.g. with a registration tool such "
            f"as ANTs, elastix or 3D Slicer) before upload"
        )


def _check_mask(mask: np.ndarray, label: str) -> np.ndarray:
    """Accept 0/1 (or boolean) masks, tolerating float rounding; anything else is refused.

    Checked one plane at a time: whole-volume temporaries would cost three more float32
    copies of the mask (192 MiB at 256³).
    """
    out = np.empty(mask.shape, dtype=bool)
    for i in range(mask.shape[0]):
        plane = mask[i]
        rounded = np.round(plane)
        near = np.abs(plane - rounded) <= 1e-3
        if not (near.all() and np.isin(rounded, (0.0, 1.0)).all()):
            # This plane holds an offending value; a strided sample shows the rest.
            sample = mask[:: max(1, mask.size // 1_000_000)]
            values = np.unique(np.concatenate((plane.ravel(), sample.ravel())))
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (" …" if len(values) > 6 else "")
            raise NiftiError(
                f"{label}: mask must be binary (0 = background, 1 = body) but holds values "
                f"{shown}; threshold it and save it as 0/1 (uint8), or leave the mask out to "
                f"derive one from the CT"
            )
        out[i] = rounded != 0.0
    if not out.any():
        raise NiftiError(
            f"{label}: mask is empty (no voxel is 1); upload the body mask that matches this "
            f"patient, or leave it out to derive one from the CT"
        )
    return out


def body_mask_from_ct(ct_hu: np.ndarray) -> np.ndarray:
    """Body mask ``(X, Y, Z)`` bool from a CT in HU.

    CT > −500 HU, largest 3-D connected component (drops the couch and stray noise), a small
    closing (bridges thin gaps in the skin line), then holes filled slice by slice on axial
    slices (air in sinuses and airways belongs to the body).
    """
    body = ct_hu > -500.0
    labels, n = ndimage.label(body)
    if n == 0:
        return body
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    body = labels == int(np.argmax(counts))
    # Pad so the closing's erosion does not eat voxels touching the volume border.
    padded = np.pad(body, 1)
    padded = ndimage.binary_closing(padded, structure=np.ones((3, 3, 3), bool))
    body = padded[1:-1, 1:-1, 1:-1]
    for z in range(body.shape[2]):
        body[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    return body


def _check_mri(mri: np.ndarray, label: str) -> None:
    """Refuse an MRI that looks like a CT in HU (files swapped) or is blank."""
    if float(np.percentile(_sample(mri), 1)) < -500.0:
        raise NiftiError(
            f"{label}: values go down to {float(mri.min()):g}, which looks like a CT in "
            f"HU rather than an MRI; check that the MRI and CT files were not swapped"
        )
    if float(mri.max()) - float(mri.min()) <= 0.0:
        raise NiftiError(
            f"{label}: every voxel has the same value ({float(mri.min()):g}); the "
            f"MRI is blank, upload the real scan"
        )


def _body_mask(
    mask: Source | None,
    mri: tuple[np.ndarray, np.ndarray],
    ct_data: np.ndarray,
    mri_label: str,
    ct_label: str,
    limits: NiftiLimits,
    max_mm: float,
) -> np.ndarray:
    """The pair's body mask: ``mask`` loaded and checked (0/1, on the MRI's grid) when
    given, else derived from the CT (refused when nothing in it is body)."""
    if mask is not None:
        mask_label = f"mask {_label_for(mask, 'uploaded mask')}"
        mask_data, mask_aff = _load(mask, mask_label, limits)
        _check_same_grid(mri, (mask_data, mask_aff), mri_label, mask_label, max_mm)
        return _check_mask(mask_data, mask_label)
    body = body_mask_from_ct(ct_data)
    if not body.any():
        raise NiftiError(
            f"{ct_label}: no voxel is above −500 HU, so no body mask can be derived; check "
            f"the CT or upload a mask"
        )
    return body


def load_nifti_pair(
    mri: Source,
    ct: Source,
    mask: Source | None = None,
    *,
    patient_id: str,
    limits: NiftiLimits = DEFAULT_LIMITS,
    max_misregistration_mm: float = 2.0,
) -> PatientVolume:
    """Load a co-registered MRI/CT pair (and optional body mask) into a :class:`PatientVolume`.

    Args:
        mri, ct, mask: paths or raw bytes (uploads); gzip or not, NIfTI-1 or NIfTI-2. The CT
            must be in Hounsfield units (see :func:`_check_ct_is_hu` for the rule). The mask,
            if given, must be 0/1; without it a body mask is derived with
            :func:`body_mask_from_ct`.
        patient_id: identifier stored in the result. Header free text (descrip, aux_file,
            intent_name, db_name) is never read into the result, so names in headers stay out.
        limits: resource limits for every file.
        max_misregistration_mm: largest allowed distance between the MRI's and CT's (or mask's)
            grid origins, mm; orientation and voxel size must agree to 1e-3.

    Returns:
        PatientVolume with mri/ct_hu ``(X, Y, Z)`` float32 in RAS, mask ``(X, Y, Z)`` bool and
        spacing_mm from the MRI's canonical affine column norms.
    """
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise NiftiError("patient_id must be a non-empty string chosen by the caller")
    mri_label = f"MRI {_label_for(mri, 'uploaded MRI')}"
    ct_label = f"CT {_label_for(ct, 'uploaded CT')}"
    mri_data, mri_aff = _load(mri, mri_label, limits)
    ct_data, ct_aff = _load(ct, ct_label, limits)
    _check_same_grid(
        (mri_data, mri_aff), (ct_data, ct_aff), mri_label, ct_label, max_misregistration_mm
    )
    _check_mri(mri_data, mri_label)
    _check_ct_is_hu(ct_data, ct_label)
    body = _body_mask(
        mask, (mri_data, mri_aff), ct_data, mri_label, ct_label, limits, max_misregistration_mm
    )
    return PatientVolume(
        patient_id=patient_id,
        mri=mri_data.astype(np.float32, copy=False),
        ct_hu=ct_data.astype(np.float32, copy=False),
        mask=body,
        spacing_mm=_spacing(mri_aff),
    )


__all__: list[str] = [
    "DEFAULT_LIMITS",
    "NiftiError",
    "NiftiLimits",
    "body_mask_from_ct",
    "load_affine",
    "load_nifti_pair",
    "load_volume",
    "save_patient_folder",
]



def save_patient_folder(
    pv: PatientVolume, target: Path, affine: np.ndarray | None = None, *, with_mask: bool = True
) -> Path:
    """Write ``pv`` as ``<target>/{mr,ct[,mask]}.nii.gz`` (SynthRAD2023 layout).

    Only the voxels and the affine are written, so no free-text header field (which may hold
    a patient's name) is copied. ``affine`` defaults to a diagonal one from
    ``pv.spacing_mm``. Every call writes into a folder of its own next to ``target`` and
    renames it into place in one step, so a loader never sees a half-written patient and two
    saves of one ID never mix their files: one wins, the other gets FileExistsError.

    Raises:
        FileExistsError: ``target`` exists, or another save created it while this one wrote.
    """
    target = Path(target)
    if target.exists():
        raise FileExistsError(errno.EEXIST, "patient folder already exists", str(target))
    if affine is None:
        affine = np.diag([*pv.spacing_mm, 1.0])
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same parent, so the rename below stays on one file system and is atomic. The ".~"
    # prefix hides the folder from cohort scans (hidden, and its third character is not a
    # center letter); mkdir fails rather than share a folder with another writer.
    tmp = target.parent / f".~{target.name}.{secrets.token_hex(8)}.partial"
    tmp.mkdir()
    try:
        nib.save(nib.Nifti1Image(pv.mri, affine), tmp / "mr.nii.gz")
        nib.save(nib.Nifti1Image(pv.ct_hu, affine), tmp / "ct.nii.gz")
        if with_mask:
            nib.save(nib.Nifti1Image(pv.mask.astype(np.uint8), affine), tmp / "mask.nii.gz")
        try:
            # Fails (EEXIST/ENOTEMPTY) instead of merging when another save got there first.
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(
                    errno.EEXIST, "another save created this patient folder first", str(target)
                ) from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename
    return target
