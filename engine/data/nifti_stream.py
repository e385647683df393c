"""Limits, errors and the bounded byte stream of the NIfTI loader (:mod:`engine.data.nifti`):
the file's bytes, decompressed or not, read with every limit checked while reading.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import nibabel as nib
import numpy as np

Source = str | os.PathLike[str] | bytes | bytearray | memoryview

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HDR = 348
_NIFTI2_HDR = 540
# Header plus the 4-byte extension flag: enough bytes to validate a header of either version.
_HEAD_BYTES = _NIFTI2_HDR + 4
# Compressed bytes handed to zlib at a time; zlib keeps the unconsumed rest, so small is cheap.
_IN_CHUNK = 64 * 1024
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


DEFAULT_LIMITS = NiftiLimits()  # a frozen value: safe as a shared default argument


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
