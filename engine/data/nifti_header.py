"""The NIfTI header's checks and the voxels' decoding, for :mod:`engine.data.nifti`.
"""

from __future__ import annotations

import math
import struct

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from engine.data.nifti_stream import (
    _FIX_EXPORT,
    _HEAD_BYTES,
    _MAX_ITEMSIZE,
    _NIFTI1_HDR,
    _NIFTI2_HDR,
    NiftiError,
    NiftiLimits,
    _fmt_bytes,
    _fmt_shape,
    _fmt_voxels,
    _HeaderInfo,
    _short,
    _Stream,
)

# Voxels converted to float32 at a time: a few MiB of temporaries whatever the volume's size.
_PIECE_VOXELS = 1 << 18


def _header_version(head: bytes, label: str) -> tuple[type[nib.Nifti1Header], int, bool]:
    """Identify the NIfTI version from ``sizeof_hdr`` and check the magic string.

    Returns ``(header class, header size in bytes (348 or 540), big_endian)``.
    """
    if len(head) < 4:
        raise NiftiError(
            f"{label}: file is empty or only {len(head)} bytes long, so it is not a NIfTI "
            f"image; check that the right file was selected and {_FIX_EXPORT}"
        )
    little = struct.unpack("<i", head[:4])[0]
    sizes = {little, struct.unpack(">i", head[:4])[0]}
    if _NIFTI1_HDR in sizes:
        hdr_klass, hdr_size = nib.Nifti1Header, _NIFTI1_HDR
    elif _NIFTI2_HDR in sizes:
        hdr_klass, hdr_size = nib.Nifti2Header, _NIFTI2_HDR
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
    return hdr_klass, hdr_size, little not in (_NIFTI1_HDR, _NIFTI2_HDR)


def _header_fields(
    head: bytes, hdr_klass: type[nib.Nifti1Header], hdr_size: int, label: str
) -> tuple[tuple[int, ...], np.dtype, int, float | None, float | None, np.ndarray]:
    """Decode the header with nibabel's strict checks.

    Returns ``(shape, dtype, vox_offset in bytes, scl_slope, scl_inter, affine)``: slope and
    intercept are ``None`` when unset, the affine is nibabel's best 4×4 (mm, stored axes).
    """
    try:
        # check=True makes nibabel refuse headers it would otherwise "fix" silently.
        hdr = hdr_klass(head[:hdr_size], check=True)
        shape = tuple(int(s) for s in hdr.get_data_shape())
        dtype = hdr.get_data_dtype()
        vox_offset = int(hdr.get_data_offset())
        slope, inter = hdr.get_slope_inter()  # None, None when scl_slope is 0 or not finite
        affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # nibabel raises several unrelated types for bad headers
        raise NiftiError(
            f"{label}: header is invalid ({_short(exc)}); the file is corrupt or written by a "
            f"non-conforming tool; {_FIX_EXPORT}"
        ) from None
    return shape, dtype, vox_offset, slope, inter, affine


def _check_vox_offset(vox_offset: int, hdr_size: int, label: str, limits: NiftiLimits) -> None:
    """Voxel data must start after the header and its (bounded) extensions."""
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


def _check_voxel_type(dtype: np.dtype, label: str) -> None:
    """Voxels must be real scalars of at most ``_MAX_ITEMSIZE`` bytes."""
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise NiftiError(
            f"{label}: voxel type {dtype} is not a real-valued scalar (complex or RGB data); "
            f"export a single-channel intensity volume"
        )
    if dtype.itemsize > _MAX_ITEMSIZE:
        raise NiftiError(
            f"{label}: voxel type {dtype.name} ({dtype.itemsize} bytes per voxel) is not "
            f"supported; save the volume as float32 or int16"
        )


def _check_volume_size(
    shape: tuple[int, ...], dtype: np.dtype, vox_offset: int, label: str, limits: NiftiLimits
) -> None:
    """Dimensions must be non-empty and 3-D, within the voxel and decompressed-byte limits."""
    if any(s <= 0 for s in shape):
        raise NiftiError(
            f"{label}: header dimensions {_fmt_shape(shape)} contain an empty axis; the file "
            f"is corrupt, {_FIX_EXPORT}"
        )
    _check_dims(shape, label)
    n_vox = math.prod(shape)  # Python ints: NIfTI-2 int64 dims would overflow numpy
    if n_vox > limits.max_voxels:
        raise NiftiError(
            f"{label}: volume has {n_vox:,} voxels ({_fmt_shape(shape)}), more than the "
            f"{_fmt_voxels(limits.max_voxels)} allowed; crop or resample it to a coarser grid "
            f"first (e.g. 1 mm voxels around the head)"
        )
    declared = vox_offset + n_vox * dtype.itemsize
    if declared > limits.max_decompressed_bytes:
        raise NiftiError(
            f"{label}: header promises {_fmt_bytes(declared)} of data "
            f"({_fmt_shape(shape)} {dtype.name} voxels), more than the "
            f"{_fmt_bytes(limits.max_decompressed_bytes)} allowed; crop or resample the volume, "
            f"or save it as float32/int16, first"
        )


def _canonical_affine(
    affine: np.ndarray, shape: tuple[int, ...], label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check the affine; return ``(ornt to RAS, 4×4 affine of the canonical array, mm)``."""
    ornt = _check_affine(affine, label)
    if not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        # What nibabel's as_closest_canonical does to the affine (as_reoriented).
        affine = affine.dot(nib.orientations.inv_ornt_aff(ornt, shape[:3]))
    return ornt, affine


def _parse_header(head: bytes, label: str, limits: NiftiLimits) -> _HeaderInfo:
    """Validate the fixed header from its raw bytes, before any voxel data is read."""
    hdr_klass, hdr_size, big_endian = _header_version(head, label)
    shape, dtype, vox_offset, slope, inter, affine = _header_fields(
        head, hdr_klass, hdr_size, label
    )
    _check_vox_offset(vox_offset, hdr_size, label, limits)
    _check_voxel_type(dtype, label)
    _check_volume_size(shape, dtype, vox_offset, label, limits)
    ornt, affine = _canonical_affine(affine, shape, label)
    return _HeaderInfo(
        hdr_size=hdr_size,
        big_endian=big_endian,
        vox_offset=vox_offset,
        shape=shape,
        dtype=dtype,
        slope=1.0 if slope is None else float(slope),
        inter=0.0 if inter is None else float(inter),
        ornt=ornt,
        affine=affine,
    )


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


def _check_affine(affine: np.ndarray, label: str) -> np.ndarray:
    """The orientation that takes the stored axes to RAS; refuses affines without one."""
    # Checked before canonicalisation, whose own error on a singular affine is cryptic.
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise NiftiError(
            f"{label}: voxel-to-world affine is degenerate (zero voxel size or NaN); fix the "
            f"header's pixdim/qform/sform, e.g. {_FIX_EXPORT}"
        )
    ornt = nib.orientations.io_orientation(affine)
    if np.isnan(ornt).any():
        raise NiftiError(
            f"{label}: voxel axes are so sheared/oblique that they cannot be matched to "
            f"R/A/S; the qform/sform is corrupt, {_FIX_EXPORT}"
        )
    return ornt


def _check_extensions(buf: bytes, info: _HeaderInfo, label: str) -> None:
    """Walk the extension chain ourselves: nibabel trusts ``esize`` and can loop or over-read."""
    if info.vox_offset <= info.hdr_size + 4 or buf[info.hdr_size] == 0:
        return
    fmt = ">ii" if info.big_endian else "<ii"
    pos = info.hdr_size + 4
    while pos + 8 <= info.vox_offset:
        esize, _ecode = struct.unpack(fmt, buf[pos : pos + 8])
        if esize < 16 or pos + esize > info.vox_offset:
            raise NiftiError(
                f"{label}: header extension at byte {pos} has an invalid size ({esize} bytes); "
                f"the header is corrupt, strip the extensions or {_FIX_EXPORT}"
            )
        pos += esize


def _truncated(label: str, info: _HeaderInfo, present: int) -> NiftiError:
    return NiftiError(
        f"{label}: file is truncated: the header ({info.describe()}) needs "
        f"{info.expected_bytes:,} bytes but only {present:,} are present; the upload or copy "
        f"was cut short, transfer the file again"
    )


def _too_long(label: str, info: _HeaderInfo, stream: _Stream) -> NiftiError:
    if stream.is_gzip:
        return NiftiError(
            f"{label}: decompresses to more than the {info.expected_bytes:,} bytes its header "
            f"declares ({info.describe()}): a decompression bomb or trailing data; "
            f"{_FIX_EXPORT}"
        )
    return NiftiError(
        f"{label}: file is {stream.stored_size:,} bytes but its header declares "
        f"{info.expected_bytes:,} ({info.describe()}): trailing data or a wrong header; "
        f"{_FIX_EXPORT}"
    )


def _read_header(stream: _Stream, label: str, limits: NiftiLimits) -> _HeaderInfo:
    """Read and check the header and extensions; leaves ``stream`` at the first voxel."""
    head = bytes(stream.read(_HEAD_BYTES))
    info = _parse_header(head, label, limits)
    prefix = head
    if len(prefix) < info.vox_offset:
        prefix += bytes(stream.read(info.vox_offset - len(prefix)))
        if len(prefix) < info.vox_offset:
            raise _truncated(label, info, len(prefix))
    _check_extensions(prefix, info, label)
    stream.unread(prefix[info.vox_offset :])
    if not stream.is_gzip:
        # Stored size is the decompressed size here: refuse before reading any voxel.
        if stream.stored_size < info.expected_bytes:
            raise _truncated(label, info, stream.stored_size)
        if stream.stored_size > info.expected_bytes:
            raise _too_long(label, info, stream)
    return info


# --------------------------------------------------------------------------- the voxels


def _pieces(
    shape: tuple[int, int, int], target: int
) -> list[tuple[tuple[slice | int, ...], tuple[int, ...]]]:
    """Split a stored (Fortran-order) volume into consecutive boxes of ≤ ``target`` voxels.

    Returns ``(index into the stored array, Fortran shape of the box)`` in file order: whole
    z-planes when a plane is small, else rows of a plane, else pieces of a row.
    """
    nx, ny, nz = shape
    out: list[tuple[tuple[slice | int, ...], tuple[int, ...]]] = []
    if nx * ny <= target:
        k = target // (nx * ny)
        for z0 in range(0, nz, k):
            z1 = min(nz, z0 + k)
            out.append(((slice(None), slice(None), slice(z0, z1)), (nx, ny, z1 - z0)))
    elif nx <= target:
        k = target // nx
        for z in range(nz):
            for y0 in range(0, ny, k):
                y1 = min(ny, y0 + k)
                out.append(((slice(None), slice(y0, y1), z), (nx, y1 - y0)))
    else:
        for z in range(nz):
            for y in range(ny):
                for x0 in range(0, nx, target):
                    x1 = min(nx, x0 + target)
                    out.append(((slice(x0, x1), y, z), (x1 - x0,)))
    return out


_CANONICAL_ORNT = np.array([[0, 1], [1, 1], [2, 1]])  # RAS: axes in order, none flipped


def _decode(stream: _Stream, info: _HeaderInfo, label: str) -> np.ndarray:
    """Stream the voxels into one float32 array in canonical order, scaled like nibabel."""
    stored = info.shape[:3]
    perm = np.argsort(info.ornt[:, 0]).astype(int)
    out = np.empty(tuple(stored[i] for i in perm), dtype=np.float32)
    # A view of `out` indexed like the stored array: nibabel's reorientation from canonical
    # (RAS) axes back to the stored ones, which only transposes and flips.
    target = nib.orientations.apply_orientation(
        out, nib.orientations.ornt_transform(_CANONICAL_ORNT, info.ornt))
    # nibabel (ArrayProxy) scales with float64 factors and its own choice of working type.
    slope, inter = np.asarray(info.slope), np.asarray(info.inter)
    bad = done = 0
    for index, box in _pieces((stored[0], stored[1], stored[2]), _PIECE_VOXELS):
        nbytes = math.prod(box) * info.dtype.itemsize
        buf = stream.read(nbytes)
        if len(buf) < nbytes:
            raise _truncated(label, info, info.vox_offset + done + len(buf))
        raw = np.frombuffer(buf, dtype=info.dtype).reshape(box, order="F")
        # Overflow to float32 becomes inf, which the finiteness count below reports.
        with np.errstate(over="ignore", invalid="ignore"):
            values = apply_read_scaling(raw, slope, inter).astype(np.float32, copy=False)
        bad += values.size - int(np.count_nonzero(np.isfinite(values)))
        target[index] = values
        done += nbytes
    if not stream.at_end():
        raise _too_long(label, info, stream)
    if bad:
        raise NiftiError(
            f"{label}: contains {bad:,} NaN/infinite voxel values; replace them (e.g. with "
            f"the background value) before upload"
        )
    return out
