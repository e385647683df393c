"""Hardened NIfTI loading for paired MRI/CT volumes (paths or in-memory uploads).

Everything a user uploads is untrusted: files may be gzip bombs, truncated, carry megabytes of
header extensions, be 4-D, be stored in raw scanner units, or hold patient names in free-text
header fields. This module turns all of those into a :class:`NiftiError` whose message names the
file, says what is wrong and how to fix it, and never leaks a nibabel/zlib traceback.

Output convention: volumes are ``(X, Y, Z)`` float32 in canonical RAS voxel order (nibabel's
``as_closest_canonical``), affines are 4×4 float64 in millimetres.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from scipy import ndimage

from engine.data.types import PatientVolume

Source = str | os.PathLike[str] | bytes | bytearray | memoryview

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HDR = 348
_NIFTI2_HDR = 540
# Header plus the 4-byte extension flag: enough bytes to validate a header of either version.
_HEAD_BYTES = _NIFTI2_HDR + 4
_CHUNK = 1 << 20
_FIX_EXPORT = "re-export it as a single-file .nii or .nii.gz (e.g. with dcm2niix or nibabel)"


@dataclass(frozen=True)
class NiftiLimits:
    """Resource limits applied to every file before and while it is read.

    Attributes:
        max_file_bytes: size of the file as stored (compressed or raw), bytes.
        max_voxels: voxels per volume (product of all header dimensions).
        max_decompressed_bytes: bytes after gzip decompression; guards decompression bombs.
        max_header_extension_bytes: bytes between the fixed header and the voxel data.
    """

    max_file_bytes: int = 2 * 1024**3
    max_voxels: int = 512 * 512 * 512
    max_decompressed_bytes: int = 4 * 1024**3
    max_header_extension_bytes: int = 1 * 1024**2


class NiftiError(ValueError):
    """A NIfTI file cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class _HeaderInfo:
    klass: type[nib.Nifti1Image]
    hdr_size: int
    vox_offset: int
    data_bytes: int
    shape: tuple[int, ...]


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _fmt_spacing(affine: np.ndarray) -> str:
    return "×".join(f"{s:.2f}" for s in _spacing(affine)) + " mm"


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    sx, sy, sz = nib.affines.voxel_sizes(affine)
    return (float(sx), float(sy), float(sz))


# --------------------------------------------------------------------------- reading bytes


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes; gzip streams may return short reads before EOF."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _parse_header(head: bytes, label: str, limits: NiftiLimits) -> _HeaderInfo:
    """Validate the fixed header from its raw bytes, before any voxel data is read."""
    if len(head) < 4:
        raise NiftiError(
            f"{label}: file is empty or only {len(head)} bytes long, so it is not a NIfTI "
            f"image; check that the right file was selected and {_FIX_EXPORT}"
        )
    sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
    if _NIFTI1_HDR in sizes:
        klass, hdr_klass, hdr_size = nib.Nifti1Image, nib.Nifti1Header, _NIFTI1_HDR
    elif _NIFTI2_HDR in sizes:
        klass, hdr_klass, hdr_size = nib.Nifti2Image, nib.Nifti2Header, _NIFTI2_HDR
    else:
        raise NiftiError(
            f"{label}: not a NIfTI file (the first 4 bytes are not a NIfTI-1/NIfTI-2 header "
            f"size); the file is corrupt or in another format (DICOM, MHA, NRRD…); {_FIX_EXPORT}"
        )
    if len(head) < hdr_size:
        raise NiftiError(
            f"{label}: file is truncated inside its {hdr_size}-byte header "
            f"({len(head)} bytes present); the upload or copy was cut short, transfer it again"
        )
    magic = head[344:348] if hdr_size == _NIFTI1_HDR else head[4:12]
    if magic[:3] in (b"ni1", b"ni2"):
        raise NiftiError(
            f"{label}: is the header half of a .hdr/.img file pair, which cannot be uploaded "
            f"on its own; {_FIX_EXPORT}"
        )
    if magic[:3] not in (b"n+1", b"n+2"):
        raise NiftiError(
            f"{label}: has no NIfTI magic string (an Analyze 7.5 file or a corrupt header), so "
            f"its orientation is unknown; {_FIX_EXPORT}"
        )
    try:
        # check=True makes nibabel refuse headers it would otherwise "fix" silently.
        hdr = hdr_klass(head[:hdr_size], check=True)
        shape = tuple(int(s) for s in hdr.get_data_shape())
        dtype = hdr.get_data_dtype()
        vox_offset = int(hdr.get_data_offset())
    except Exception as exc:  # nibabel raises several unrelated types for bad headers
        raise NiftiError(
            f"{label}: header is invalid ({_short(exc)}); the file is corrupt or written by a "
            f"non-conforming tool; {_FIX_EXPORT}"
        ) from None
    min_offset = hdr_size + 4
    if vox_offset < min_offset:
        raise NiftiError(
            f"{label}: header says the voxel data starts at byte {vox_offset}, inside the "
            f"header (must be ≥ {min_offset}); the header is corrupt, {_FIX_EXPORT}"
        )
    if vox_offset - min_offset > limits.max_header_extension_bytes:
        raise NiftiError(
            f"{label}: header extensions take {_fmt_bytes(vox_offset - min_offset)} "
            f"(vox_offset {vox_offset}), more than the "
            f"{_fmt_bytes(limits.max_header_extension_bytes)} allowed; strip the extensions "
            f"(e.g. save with nibabel after `img.header.extensions.clear()`) and upload again"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise NiftiError(
            f"{label}: voxel type {dtype} is not a real-valued scalar (complex or RGB data); "
            f"export a single-channel intensity volume"
        )
    if any(s <= 0 for s in shape):
        raise NiftiError(
            f"{label}: header dimensions {_fmt_shape(shape)} contain an empty axis; the file "
            f"is corrupt, {_FIX_EXPORT}"
        )
    _check_dims(shape, label)
    n_vox = math.prod(shape)  # Python ints: NIfTI-2 int64 dims would overflow numpy
    data_bytes = n_vox * dtype.itemsize
    if n_vox > limits.max_voxels:
        raise NiftiError(
            f"{label}: volume has {n_vox:,} voxels ({_fmt_shape(shape)}), more than the "
            f"{limits.max_voxels:,} allowed; crop or resample it to a coarser grid first"
        )
    if vox_offset + data_bytes > limits.max_decompressed_bytes:
        raise NiftiError(
            f"{label}: header promises {_fmt_bytes(vox_offset + data_bytes)} of data, more "
            f"than the {_fmt_bytes(limits.max_decompressed_bytes)} allowed; crop or resample "
            f"the volume first"
        )
    return _HeaderInfo(klass, hdr_size, vox_offset, data_bytes, shape)


def _check_dims(shape: tuple[int, ...], label: str) -> None:
    """Refuse anything that is not one 3-D volume (a trailing axis of length 1 is fine)."""
    if len(shape) < 3:
        raise NiftiError(
            f"{label}: is {len(shape)}-D (shape {_fmt_shape(shape)}); export a single 3-D "
            f"volume, not a slice or an image"
        )
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise NiftiError(
            f"{label}: is {len(shape)}-D (shape {_fmt_shape(shape)}); export a single 3-D "
            f"volume (e.g. pick one time point or echo with fslroi / nibabel)"
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _check_extensions(buf: memoryview, info: _HeaderInfo, label: str, big_endian: bool) -> None:
    """Walk the extension chain ourselves: nibabel trusts ``esize`` and can loop or over-read."""
    if info.vox_offset <= info.hdr_size + 4 or buf[info.hdr_size] == 0:
        return
    fmt = ">ii" if big_endian else "<ii"
    pos = info.hdr_size + 4
    while pos + 8 <= info.vox_offset:
        esize, _ecode = struct.unpack(fmt, bytes(buf[pos : pos + 8]))
        if esize < 16 or pos + esize > info.vox_offset:
            raise NiftiError(
                f"{label}: header extension at byte {pos} has an invalid size ({esize} bytes); "
                f"the header is corrupt, strip the extensions or {_FIX_EXPORT}"
            )
        pos += esize


def _open_source(source: Source, label: str, limits: NiftiLimits) -> tuple[BinaryIO, bool]:
    """Open a path or wrap bytes; returns (stream, is_gzip) with the stream at position 0."""
    if isinstance(source, bytes | bytearray | memoryview):
        size = len(source)
        stream: BinaryIO = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise NiftiError(
                f"{label}: file not found at {path}; check the path (and that it is a file, "
                f"not a folder)"
            )
        size = path.stat().st_size
        stream = open(path, "rb")  # closed by _read_image_bytes
    if size > limits.max_file_bytes:
        stream.close()
        raise NiftiError(
            f"{label}: file is {_fmt_bytes(size)}, more than the "
            f"{_fmt_bytes(limits.max_file_bytes)} allowed; crop or resample the volume first"
        )
    is_gzip = stream.read(2) == _GZIP_MAGIC
    stream.seek(0)
    return stream, is_gzip


def _read_image_bytes(
    source: Source, label: str, limits: NiftiLimits
) -> tuple[io.BytesIO, _HeaderInfo]:
    """Read (and if needed gunzip) a file into memory, validating the header first."""
    raw, is_gzip = _open_source(source, label, limits)
    try:
        # Compression is decided from magic bytes, not the extension: mislabelled files abound.
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
        try:
            head = _read_exact(stream, _HEAD_BYTES)
            info = _parse_header(head, label, limits)
            out = io.BytesIO()
            out.write(head)
            total = len(head)
            cap = limits.max_decompressed_bytes
            # Stream in chunks so a bomb is stopped at the cap instead of filling memory.
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > cap:
                    raise NiftiError(
                        f"{label}: decompresses to more than {_fmt_bytes(cap)} although its "
                        f"header describes {_fmt_bytes(info.vox_offset + info.data_bytes)} "
                        f"(a decompression bomb or trailing junk); {_FIX_EXPORT}"
                    )
                out.write(chunk)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise NiftiError(
                f"{label}: gzip stream is truncated or corrupt ({_short(exc)}); the upload or "
                f"download was cut short or the file is damaged, transfer it again"
            ) from None
        except OSError as exc:
            raise NiftiError(f"{label}: cannot be read ({_short(exc)}); check the file") from None
    finally:
        raw.close()
    needed = info.vox_offset + info.data_bytes
    if total < needed:
        raise NiftiError(
            f"{label}: file is truncated: the header ({_fmt_shape(info.shape)} voxels) needs "
            f"{needed:,} bytes but only {total:,} are present; the upload or copy was cut short, "
            f"transfer the file again"
        )
    big_endian = struct.unpack("<i", head[:4])[0] not in (_NIFTI1_HDR, _NIFTI2_HDR)
    _check_extensions(out.getbuffer(), info, label, big_endian)
    out.seek(0)
    return out, info


# --------------------------------------------------------------------------- public loaders


def _check_affine(affine: np.ndarray, label: str) -> None:
    # Checked before canonicalisation, whose own error on a singular affine is cryptic.
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise NiftiError(
            f"{label}: voxel-to-world affine is degenerate (zero voxel size or NaN); fix the "
            f"header's pixdim/qform/sform, e.g. {_FIX_EXPORT}"
        )
    if np.isnan(nib.orientations.io_orientation(affine)).any():
        raise NiftiError(
            f"{label}: voxel axes are so sheared/oblique that they cannot be matched to "
            f"R/A/S; the qform/sform is corrupt, {_FIX_EXPORT}"
        )


def _load(source: Source, label: str, limits: NiftiLimits) -> tuple[np.ndarray, np.ndarray]:
    buf, info = _read_image_bytes(source, label, limits)
    try:
        # from_file_map on a BytesIO: no temp files, and nibabel never sees the original path.
        fh = nib.FileHolder(fileobj=buf)
        img = info.klass.from_file_map({"header": fh, "image": fh})
        _check_affine(np.asarray(img.affine, dtype=np.float64), label)
        img = nib.as_closest_canonical(img)
        # get_fdata applies scl_slope / scl_inter, so values come out in physical units.
        # Overflow to float32 becomes inf, which the finiteness check below reports.
        with np.errstate(over="ignore", invalid="ignore"):
            data = img.get_fdata(dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except NiftiError:
        raise
    except Exception as exc:
        raise NiftiError(
            f"{label}: nibabel could not decode the image ({_short(exc)}); the file is corrupt "
            f"or non-conforming, {_FIX_EXPORT}"
        ) from None
    finally:
        buf.close()
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise NiftiError(
            f"{label}: contains {bad:,} NaN/infinite voxel values; replace them (e.g. with "
            f"the background value) before upload"
        )
    return np.ascontiguousarray(data), affine


def _label_for(source: Source, name: str) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"'{name}'"
    return f"'{Path(source).name}'"


def load_volume(
    path: str | Path | bytes, *, name: str = "volume", limits: NiftiLimits = NiftiLimits()
) -> tuple[np.ndarray, np.ndarray]:
    """Load one 3-D NIfTI-1/NIfTI-2 volume, gzip or not, from a path or raw bytes.

    Args:
        path: file path, or the file's bytes (e.g. a Streamlit upload). Gzip is detected from
            the magic bytes, so the extension does not matter.
        name: how to call the file in error messages when ``path`` is bytes (a path's
            basename is used otherwise).
        limits: resource limits (file size, voxels, decompressed bytes, header extensions).

    Returns:
        ``(data, affine)``: data ``(X, Y, Z)`` float32 in canonical RAS voxel order with
        scl_slope/scl_inter applied; affine ``(4, 4)`` float64 voxel → world (mm) of the
        canonical image.

    Raises:
        NiftiError: anything unusable (corrupt, truncated, bomb, 2-D/4-D, NaN/inf, …).
    """
    return _load(path, _label_for(path, name), limits)


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
    """Accept 0/1 (or boolean) masks, tolerating float rounding; anything else is refused."""
    rounded = np.round(mask)
    near = np.abs(mask - rounded) <= 1e-3
    ok = bool(near.all()) and bool(np.isin(rounded, (0.0, 1.0)).all())
    if not ok:
        values = np.unique(mask[:: max(1, mask.size // 1_000_000)])
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" …" if len(values) > 6 else "")
        raise NiftiError(
            f"{label}: mask must be binary (0 = background, 1 = body) but holds values {shown}; "
            f"threshold it and save it as 0/1 (uint8), or leave the mask out to derive one "
            f"from the CT"
        )
    out = rounded.astype(bool)
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


def load_nifti_pair(
    mri: Source,
    ct: Source,
    mask: Source | None = None,
    *,
    patient_id: str,
    limits: NiftiLimits = NiftiLimits(),
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
    if float(np.percentile(_sample(mri_data), 1)) < -500.0:
        raise NiftiError(
            f"{mri_label}: values go down to {float(mri_data.min()):g}, which looks like a CT in "
            f"HU rather than an MRI; check that the MRI and CT files were not swapped"
        )
    if float(mri_data.max()) - float(mri_data.min()) <= 0.0:
        raise NiftiError(
            f"{mri_label}: every voxel has the same value ({float(mri_data.min()):g}); the "
            f"MRI is blank, upload the real scan"
        )
    _check_ct_is_hu(ct_data, ct_label)
    if mask is not None:
        mask_label = f"mask {_label_for(mask, 'uploaded mask')}"
        mask_data, mask_aff = _load(mask, mask_label, limits)
        _check_same_grid(
            (mri_data, mri_aff),
            (mask_data, mask_aff),
            mri_label,
            mask_label,
            max_misregistration_mm,
        )
        body = _check_mask(mask_data, mask_label)
    else:
        body = body_mask_from_ct(ct_data)
        if not body.any():
            raise NiftiError(
                f"{ct_label}: no voxel is above −500 HU, so no body mask can be derived; check "
                f"the CT or upload a mask"
            )
    return PatientVolume(
        patient_id=patient_id,
        mri=mri_data.astype(np.float32, copy=False),
        ct_hu=ct_data.astype(np.float32, copy=False),
        mask=body,
        spacing_mm=_spacing(mri_aff),
    )


__all__: list[str] = [
    "NiftiError",
    "NiftiLimits",
    "body_mask_from_ct",
    "load_nifti_pair",
    "load_volume",
]


def save_patient_folder(pv: PatientVolume, target: Path, affine: np.ndarray | None = None,
                        *, with_mask: bool = True) -> Path:
    """Write ``pv`` as ``<target>/{mr,ct[,mask]}.nii.gz`` (SynthRAD2023 layout).

    Only the voxels and the affine are written, so no free-text header field (which may hold
    a patient's name) is copied. ``affine`` defaults to a diagonal one from
    ``pv.spacing_mm``. The files are written next to ``target`` and renamed into place, so a
    half-written patient is never picked up by a loader. Raises FileExistsError if ``target``
    exists.
    """
    target = Path(target)
    if target.exists():
        raise FileExistsError(target)
    if affine is None:
        affine = np.diag([*pv.spacing_mm, 1.0])
    tmp = target.parent.parent / f".{target.parent.name}-partial-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        nib.save(nib.Nifti1Image(pv.mri, affine), tmp / "mr.nii.gz")
        nib.save(nib.Nifti1Image(pv.ct_hu, affine), tmp / "ct.nii.gz")
        if with_mask:
            nib.save(nib.Nifti1Image(pv.mask.astype(np.uint8), affine), tmp / "mask.nii.gz")
        tmp.rename(target)  # fails rather than merging if someone saved the same ID meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
