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
that limit in the message (for uploads, ``server.maxUploadSize`` in ``.streamlit/config.toml``
is set just above it). The header is read and checked first; the voxels are then decompressed
as a stream, converted to float32 piece by piece, and refused the moment the stream yields more
bytes than the header declares. So a volume costs its float32 voxels (at most 64 MiB) plus
about 15 MiB of buffers (77 MiB measured for a 256³ float64 file, see
``benchmarks/nifti_limits.py``), and a decompression bomb costs no more than the largest honest
volume.
"""

from __future__ import annotations

import errno
import math
import os
import secrets
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling
from scipy import ndimage

from engine.data.types import PatientVolume

Source = str | os.PathLike[str] | bytes | bytearray | memoryview

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HDR = 348
_NIFTI2_HDR = 540
# Header plus the 4-byte extension flag: enough bytes to validate a header of either version.
_HEAD_BYTES = _NIFTI2_HDR + 4
# Compressed bytes handed to zlib at a time; zlib keeps the unconsumed rest, so small is cheap.
_IN_CHUNK = 64 * 1024
# Voxels converted to float32 at a time: a few MiB of temporaries whatever the volume's size.
_PIECE_VOXELS = 1 << 18
# float128/complex voxels are never scanner output and would double the worst-case file size.
_MAX_ITEMSIZE = 8
_FIX_EXPORT = "re-export it as a single-file .nii or .nii.gz (e.g. with dcm2niix or nibabel)"


@dataclass(frozen=True)
class NiftiLimits:
    """Resource limits applied to every file before and while it is read.

    The defaults bound one volume to 256³ voxels (a 1 mm head fits with room to spare). With
    at most 8 bytes per voxel and 1 MiB of extensions, no acceptable file exceeds 130 MiB
    stored or decompressed, which is also the upload cap (``server.maxUploadSize``).

    Attributes:
        max_file_bytes: size of the file as stored (compressed or raw), bytes; 130 MiB.
        max_voxels: voxels per volume (product of all header dimensions); 256³ = 16,777,216.
        max_decompressed_bytes: bytes the header may declare (header, extensions and voxel
            data); 130 MiB. A stream that yields more than its header declares is refused
            as soon as it does, whatever this limit.
        max_header_extension_bytes: bytes between the fixed header and the voxel data; 1 MiB.
        max_gzip_members: gzip members one file may hold (an exported NIfTI has one; joined
            files a few); 16. Millions of empty members inside the size limit would cost
            seconds of work per file for nothing.
    """

    max_file_bytes: int = 130 * 1024**2
    max_voxels: int = 256**3
    max_decompressed_bytes: int = 130 * 1024**2
    max_header_extension_bytes: int = 1 * 1024**2
    max_gzip_members: int = 16


class NiftiError(ValueError):
    """A NIfTI file cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class _HeaderInfo:
    hdr_size: int
    big_endian: bool
    vox_offset: int
    shape: tuple[int, ...]  # as declared, trailing length-1 axes included
    dtype: np.dtype
    slope: float  # scl_slope/scl_inter as nibabel applies them (1, 0 when unset)
    inter: float
    ornt: np.ndarray  # nibabel orientation taking the stored axes to RAS
    affine: np.ndarray  # voxel → world of the canonical (RAS) array

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def expected_bytes(self) -> int:
        """Exact decompressed size: header, extensions and voxel data, nothing after."""
        return self.vox_offset + self.data_bytes

    def describe(self) -> str:
        return f"{_fmt_shape(self.shape)} {self.dtype.name} voxels after {self.vox_offset} bytes"


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _fmt_voxels(n: int) -> str:
    side = round(n ** (1 / 3))
    return f"{n:,} ({side}³)" if side**3 == n else f"{n:,}"


def _fmt_spacing(affine: np.ndarray) -> str:
    return "×".join(f"{s:.2f}" for s in _spacing(affine)) + " mm"


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    sx, sy, sz = nib.affines.voxel_sizes(affine)
    return (float(sx), float(sy), float(sz))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


# --------------------------------------------------------------------------- reading bytes


def _unreadable(label: str, exc: OSError) -> NiftiError:
    return NiftiError(
        f"{label}: cannot be read ({_short(exc)}); check that the file exists and is readable"
    )


class _Stream:
    """The bytes of a path or an upload, gunzipped on the fly when they start with gzip magic.

    ``read(n)`` never lets zlib produce more than the ``n`` bytes asked for, so however much a
    file would inflate to, only what the caller asked for is ever in memory. Uploads are read
    through a memoryview: the caller's bytes are never copied.
    """

    def __init__(self, source: Source, label: str, limits: NiftiLimits) -> None:
        self._label = label
        self._max_members, self._members = limits.max_gzip_members, 0
        self._file: BinaryIO | None = None
        self._view: memoryview | None = None
        self._pos = 0
        self._pending: bytes = b""  # bytes read ahead and given back with unread()
        self._inflater: zlib._Decompress | None = None
        self._inbuf: bytes | memoryview = b""  # compressed input zlib has not consumed yet
        if isinstance(source, bytes | bytearray | memoryview):
            view = memoryview(source)
            self._view = view if view.ndim == 1 and view.itemsize == 1 else view.cast("B")
            size = len(self._view)
        else:
            path = Path(source)
            if not path.is_file():
                raise NiftiError(
                    f"{label}: file not found at {path}; check the path (and that it is a "
                    f"file, not a folder)"
                )
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise _unreadable(label, exc) from None
        if size > limits.max_file_bytes:
            raise NiftiError(
                f"{label}: file is {_fmt_bytes(size)}, more than the "
                f"{_fmt_bytes(limits.max_file_bytes)} allowed; crop or resample the volume to "
                f"at most {_fmt_voxels(limits.max_voxels)} voxels first"
            )
        self.stored_size = size
        if self._view is None:
            try:
                self._file = open(path, "rb")  # closed by close() / the with-block
            except OSError as exc:
                raise _unreadable(label, exc) from None
        # Compression is decided from magic bytes, not the extension: mislabelled files abound.
        try:
            first = self._raw_read(2)
        except NiftiError:
            self.close()
            raise
        self.is_gzip = bytes(first) == _GZIP_MAGIC
        self._pending = bytes(first)
        if self.is_gzip:
            self._inbuf, self._pending = self._pending, b""

    def __enter__(self) -> _Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _raw_read(self, n: int) -> bytes | memoryview:
        """Up to ``n`` stored bytes (fewer only at the end of the file)."""
        if self._view is not None:
            chunk = self._view[self._pos : self._pos + n]
            self._pos += len(chunk)
            return chunk
        assert self._file is not None
        parts: list[bytes] = []
        got = 0
        try:
            while got < n:
                chunk = self._file.read(n - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except OSError as exc:
            raise _unreadable(self._label, exc) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def unread(self, data: bytes) -> None:
        self._pending = bytes(data) + self._pending

    def read(self, n: int) -> bytes | memoryview:
        """Up to ``n`` (decompressed) bytes; fewer only at the end of the data."""
        parts: list[bytes | memoryview] = []
        if self._pending:
            parts.append(self._pending[:n])
            self._pending = self._pending[n:]
        want = n - sum(len(p) for p in parts)
        if want > 0:
            if self.is_gzip:
                parts.extend(self._inflate(want))
            else:
                parts.append(self._raw_read(want))
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def at_end(self) -> bool:
        """True if nothing follows; decompresses at most one more byte to find out."""
        return not self.read(1)

    def _truncated_gzip(self, detail: str) -> NiftiError:
        return NiftiError(
            f"{self._label}: gzip stream is truncated or corrupt ({detail}); the upload or "
            f"download was cut short or the file is damaged, transfer it again"
        )

    def _inflate(self, want: int) -> list[bytes]:
        parts: list[bytes] = []
        got = 0
        try:
            while got < want:
                if self._inflater is None and not self._start_member():
                    break
                assert self._inflater is not None
                # max_length is the hard limit: zlib stops there and keeps the rest of the input.
                out = self._inflater.decompress(self._inbuf, want - got)
                self._inbuf = self._inflater.unconsumed_tail
                if out:
                    parts.append(out)
                    got += len(out)
                if self._inflater.eof:
                    self._inbuf = self._inflater.unused_data
                    self._inflater = None
                elif not out:
                    more = self._raw_read(_IN_CHUNK)
                    if not more:
                        raise self._truncated_gzip("it ends before the end-of-stream marker")
                    self._inbuf = bytes(self._inbuf) + bytes(more) if self._inbuf else more
        except zlib.error as exc:
            raise self._truncated_gzip(_short(exc)) from None
        return parts

    def _start_member(self) -> bool:
        """Begin the next gzip member; False at the end of the file.

        Like Python's gzip module: concatenated members are one stream, and zero padding
        after a member is ignored.
        """
        buf = bytes(self._inbuf).lstrip(b"\0")
        while len(buf) < 2:
            more = self._raw_read(_IN_CHUNK)
            if not more:
                if buf:
                    break
                self._inbuf = b""
                return False
            buf = (buf + bytes(more)).lstrip(b"\0")
        if buf[:2] != _GZIP_MAGIC:
            raise NiftiError(
                f"{self._label}: has data after the end of its gzip stream that is not gzip "
                f"(starting with {buf[:8].hex()}); the file was damaged or two files were "
                f"joined, {_FIX_EXPORT}"
            )
        self._members += 1
        if self._members > self._max_members:
            raise NiftiError(
                f"{self._label}: gzip stream has more than {self._max_members} members (an "
                f"exported NIfTI file has one); {_FIX_EXPORT}"
            )
        self._inbuf = buf
        self._inflater = zlib.decompressobj(wbits=31)  # gzip header and CRC/length trailer
        return True


# --------------------------------------------------------------------------- the header


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


# --------------------------------------------------------------------------- public loaders


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
    path: Source, *, name: str = "volume", limits: NiftiLimits = NiftiLimits()
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
    path: Source, *, name: str = "volume", limits: NiftiLimits = NiftiLimits()
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
