"""Hostile NIfTI input: generated malformed files and pairs through both loading routes.

Every case is generated at test time from a seeded numpy generator, so the suite is
deterministic. Each file goes through the path route (``load_volume`` / ``load_nifti_pair`` on
files) and the bytes route the upload page uses (the same functions on the files' bytes, as
``app.data.check_pair`` passes them). The contract: a file either loads as finite float32
``(X, Y, Z)`` voxels with a finite affine, or raises :class:`NiftiError` whose one-line message
starts with the file's label; no other exception, no call slower than a second, and both
routes agree. Where the right answer is known (valid files, truncations, bombs, NaN, gzip
framing) the test checks it, valid files against nibabel's own decoding.

Decompression bombs and the largest accepted volume are also measured in child processes
(peak resident memory, which sees zlib's buffers too) with ``benchmarks/nifti_limits.py``.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import engine.data.nifti as nifti
import engine.data.nifti_header as nifti_header
from engine.data.nifti import (
    NiftiError,
    load_affine,
    load_nifti_pair,
    load_volume,
    save_patient_folder,
)
from engine.data.synthrad import scan_synthrad
from engine.data.types import PatientVolume
from engine.data.uploads import cohort_counts, save_patient

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261128
MAX_SECONDS = 1.0  # per call: a hang or a slow bomb fails the case, not the whole session
DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.float32,
          np.float64]
DATATYPE_CODES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 256, 512, 768, 1024, 1280, 1536, 1792,
                  2048, 2304]
REFUSE = "refuse"
ACCEPT = "accept"
EITHER = "either"


def _bench():
    """benchmarks/nifti_limits.py by path: the bomb builder and the child-process measurement
    (the benchmarks folder is not an installed package)."""
    spec = importlib.util.spec_from_file_location(
        "nifti_limits_bench", ROOT / "benchmarks" / "nifti_limits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


# --------------------------------------------------------------------------- valid files


@dataclass
class Parts:
    """Everything a generated single-file NIfTI is made of, before any corruption."""

    version: int
    endian: str
    data: np.ndarray  # stored (Fortran) order, trailing singleton axes included
    dtype: np.dtype
    affine: np.ndarray
    slope: float = 1.0
    inter: float = 0.0
    extensions: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def hdr_size(self) -> int:
        return 348 if self.version == 1 else 540


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    """Axis permutation, flips, voxel sizes, an origin and sometimes a mild obliquity."""
    columns = np.zeros((3, 3))
    columns[rng.permutation(3), np.arange(3)] = rng.choice([-1.0, 1.0], 3) * rng.uniform(0.5, 3, 3)
    if rng.random() < 0.3:
        angle = rng.uniform(-0.4, 0.4)
        c, s = np.cos(angle), np.sin(angle)
        columns = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ columns
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


def _random_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.normal(size=shape) * 10.0 ** rng.integers(-3, 6)).astype(dt)
    info = np.iinfo(dt)
    # Within ±2^24: larger int64 values round differently in nibabel's two code paths.
    lo, hi = max(int(info.min), -(2**24)), min(int(info.max), 2**24)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)


def random_parts(rng: np.random.Generator) -> Parts:
    shape = tuple(int(s) for s in rng.integers(2, 10, 3))
    if rng.random() < 0.15:
        shape += (1,) * int(rng.integers(1, 3))
    dtype = np.dtype(DTYPES[int(rng.integers(len(DTYPES)))])
    parts = Parts(version=int(rng.choice([1, 2])), endian=str(rng.choice(["<", ">"])),
                  data=_random_values(rng, shape, dtype), dtype=dtype,
                  affine=_random_affine(rng))
    if rng.random() < 0.3:
        parts.slope, parts.inter = float(rng.uniform(0.01, 10)), float(rng.uniform(-1e3, 1e3))
    if rng.random() < 0.2:
        parts.extensions = [(int(rng.choice([0, 2, 4, 6, 40])),
                             rng.bytes(int(rng.integers(0, 5)) * 16 + 8))
                            for _ in range(int(rng.integers(1, 4)))]
    return parts


def _extension_block(parts: Parts) -> bytes:
    fmt = f"{parts.endian}ii"
    return b"".join(struct.pack(fmt, len(payload) + 8, code) + payload
                    for code, payload in parts.extensions)


def encode(parts: Parts) -> bytes:
    """The single-file NIfTI bytes of ``parts``, written field by field (no nibabel writer,
    which would choose its own scaling)."""
    klass = nib.Nifti1Header if parts.version == 1 else nib.Nifti2Header
    hdr = klass(endianness=parts.endian)
    hdr.set_data_shape(parts.data.shape)
    hdr.set_data_dtype(parts.dtype)
    hdr.set_sform(parts.affine, code=1)
    hdr.set_qform(parts.affine, code=1)
    hdr["scl_slope"], hdr["scl_inter"] = parts.slope, parts.inter
    ext = _extension_block(parts)
    hdr["vox_offset"] = parts.hdr_size + 4 + len(ext)
    hdr["magic"] = b"n+1" if parts.version == 1 else b"n+2"
    flag = b"\x01\0\0\0" if ext else bytes(4)
    raw = parts.data.astype(parts.dtype.newbyteorder(parts.endian)).tobytes(order="F")
    return hdr.binaryblock + flag + ext + raw


def nibabel_reference(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """What nibabel itself makes of an uncompressed file: canonical float32 voxels, affine."""
    size = struct.unpack("<i", blob[:4])[0]
    version = 1 if size == 348 or struct.unpack(">i", blob[:4])[0] == 348 else 2
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = nib.as_closest_canonical(klass.from_bytes(blob))
    data = img.get_fdata(dtype=np.float32)
    return data.reshape(data.shape[:3]), np.asarray(img.affine)


def gz(raw: bytes, level: int = 6) -> bytes:
    return gzip.compress(raw, compresslevel=level, mtime=0)


# --------------------------------------------------------------------------- corruptions


def _header_view(blob: bytearray) -> np.ndarray:
    """A writable structured view of the header inside ``blob`` (either version/endianness)."""
    little = struct.unpack("<i", bytes(blob[:4]))[0]
    big = struct.unpack(">i", bytes(blob[:4]))[0]
    version_1 = 348 in (little, big)
    dt = nib.nifti1.header_dtype if version_1 else nib.nifti2.header_dtype
    endian = "<" if little in (348, 540) else ">"
    return np.ndarray((), dtype=dt.newbyteorder(endian), buffer=blob)


def _absurd(rng: np.random.Generator, dt: np.dtype) -> object:
    """A hostile value for a header field of type ``dt``."""
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.choice([0, 1, -1 if dt.kind == "i" else 0, int(info.max), int(info.min),
                           int(rng.integers(info.min, info.max, endpoint=True))])
    if dt.kind == "f":
        return rng.choice([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, 1e30, -1.0,
                           float(rng.normal() * 10.0 ** rng.integers(-5, 30))])
    return rng.bytes(dt.itemsize)


def set_random_field(rng: np.random.Generator, blob: bytes, names: list[str] | None = None
                     ) -> tuple[bytes, str]:
    ba = bytearray(blob)
    view = _header_view(ba)
    name = str(rng.choice(names or list(view.dtype.names)))
    base = view.dtype.fields[name][0]
    with np.errstate(all="ignore"):
        if base.shape:
            index = int(rng.integers(base.shape[0]))
            view[name][index] = _absurd(rng, base.base)
            name = f"{name}[{index}]"
        else:
            view[name] = _absurd(rng, base)
    return bytes(ba), name


@dataclass
class Case:
    """One generated file: its bytes, what must happen, and a pattern the refusal must match."""

    name: str
    blob: bytes
    expect: str
    pattern: str = ""
    reference: bytes | None = None  # uncompressed bytes nibabel must decode identically


def _valid_cases(rng: np.random.Generator, n: int) -> list[Case]:
    out = []
    for i in range(n):
        raw = encode(random_parts(rng))
        blob = raw if rng.random() < 0.5 else gz(raw, int(rng.integers(1, 10)))
        out.append(Case(f"valid-{i}", blob, ACCEPT, reference=raw))
    return out


def _truncations(rng: np.random.Generator, n: int) -> list[Case]:
    out = []
    for i in range(n):
        raw = encode(random_parts(rng))
        kind = i % 3
        if kind == 0:
            blob = raw[: int(rng.integers(0, len(raw)))]
        elif kind == 1:
            packed = gz(raw)
            blob = packed[: int(rng.integers(0, len(packed)))]
        else:
            blob = gz(raw[: int(rng.integers(0, len(raw)))])
        out.append(Case(f"truncated-{i}", blob, REFUSE,
                        r"truncated|empty|not a NIfTI|gzip stream"))
    return out


def _bit_flips(rng: np.random.Generator, n: int) -> list[Case]:
    out = []
    for i in range(n):
        parts = random_parts(rng)
        raw = bytearray(encode(parts))
        span = parts.hdr_size + 4 + len(_extension_block(parts))
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, span))
            raw[pos] ^= 1 << int(rng.integers(8))
        blob = bytes(raw)
        out.append(Case(f"bitflip-{i}", blob if i % 2 else gz(blob), EITHER))
    return out


def _absurd_fields(rng: np.random.Generator, n: int) -> list[Case]:
    """Random header fields set to absurd values; a third of them dims, a third datatypes."""
    out = []
    for i in range(n):
        raw = encode(random_parts(rng))
        if i % 3 == 0:
            blob, what = set_random_field(rng, raw, ["dim"])
        elif i % 3 == 1:
            ba = bytearray(raw)
            view = _header_view(ba)
            view["datatype"] = int(rng.choice(DATATYPE_CODES + [int(rng.integers(-32768, 32767))]))
            if rng.random() < 0.5:
                view["bitpix"] = int(rng.choice([0, 1, 8, 16, 24, 32, 64, 128, 256, -8]))
            blob, what = bytes(ba), "datatype"
        else:
            blob, what = raw, ""
            for _ in range(int(rng.integers(1, 4))):
                blob, name = set_random_field(rng, blob)
                what += name + ","
        out.append(Case(f"field-{i}-{what}", blob if i % 4 else gz(blob), EITHER))
    # Dimensions far beyond any limit (NIfTI-2 has int64 dims), checked before reading.
    for i, dims in enumerate([(2**40, 2**40, 2**40), (32767, 32767, 32767), (4096, 4096, 4096),
                              (257, 256, 256), (2**62, 1, 1), (1, 1, 2**31)]):
        parts = random_parts(np.random.default_rng(i))
        parts.version = 2
        ba = bytearray(encode(parts))
        view = _header_view(ba)
        view["dim"][0] = 3
        view["dim"][1:4] = dims
        out.append(Case(f"huge-dims-{i}", bytes(ba), REFUSE, r"voxels .* more than the"))
    return out


def _nan_inf(rng: np.random.Generator, n: int) -> list[Case]:
    out = []
    for i in range(n):
        parts = random_parts(rng)
        if i % 3 == 2:  # integer data whose scaling overflows float32
            parts.dtype = np.dtype(np.int16)
            parts.data = np.full(parts.data.shape, 30000, np.int16)
            parts.slope, parts.inter = 1e38, 0.0
            k = parts.data.size
        else:
            parts.dtype = np.dtype(rng.choice([np.float32, np.float64]))
            parts.data = parts.data.astype(parts.dtype)
            k = int(rng.integers(1, min(6, parts.data.size)))
            flat = parts.data.reshape(-1, order="F")
            flat[rng.choice(flat.size, k, replace=False)] = rng.choice([np.nan, np.inf, -np.inf],
                                                                       k)
            parts.data = flat.reshape(parts.data.shape, order="F")
        blob = encode(parts)
        out.append(Case(f"nan-{i}", blob if i % 2 else gz(blob), REFUSE,
                        rf"contains {k:,} NaN/infinite"))
    for i in range(n // 4):  # NaN/inf scaling factors: no scaling, or an invalid header
        parts = random_parts(rng)
        parts.slope = float(rng.choice([np.nan, np.inf, 0.0]))
        out.append(Case(f"nan-slope-{i}", encode(parts), ACCEPT))
        parts.slope, parts.inter = 2.0, float(rng.choice([np.nan, np.inf, -np.inf]))
        out.append(Case(f"nan-inter-{i}", encode(parts), REFUSE, r"header is invalid"))
    return out


def _gzip_header(flags: int, extra: bytes = b"", name: bytes = b"", comment: bytes = b"") -> bytes:
    head = b"\x1f\x8b\x08" + bytes([flags]) + bytes(4) + b"\x00\xff"
    if flags & 4:
        head += struct.pack("<H", len(extra)) + extra
    if flags & 8:
        head += name + b"\0"
    if flags & 16:
        head += comment + b"\0"
    if flags & 2:
        head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return head


def _deflate(raw: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return comp.compress(raw) + comp.flush()


def _gzip_oddities(rng: np.random.Generator, n: int) -> list[Case]:
    """Gzip framing: members, padding, junk, flags, checksums, nesting."""
    out = []
    for i in range(n):
        raw = encode(random_parts(rng))
        packed = gz(raw)
        kind = i % 15
        trailer = struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF)
        if kind == 0:
            cut = int(rng.integers(0, len(raw) + 1))
            case = Case("members", gz(raw[:cut]) + gz(raw[cut:]), ACCEPT, reference=raw)
        elif kind == 1:
            case = Case("zero-padding", packed + bytes(int(rng.integers(1, 5000))), ACCEPT,
                        reference=raw)
        elif kind == 2:
            junk = bytes([int(rng.integers(1, 256)) if rng.random() < 0.5 else 0x1F]) + rng.bytes(
                int(rng.integers(0, 100)))
            case = Case("trailing-junk", packed + junk, REFUSE,
                        r"after the end of its gzip stream|gzip stream is truncated or corrupt")
        elif kind == 3:
            extra = gz(rng.bytes(int(rng.integers(1, 5000))))
            case = Case("extra-member", packed + extra, REFUSE, r"decompresses to more than")
        elif kind == 4:
            case = Case("empty-member-first", gz(b"") + packed, ACCEPT, reference=raw)
        elif kind == 5:
            bad = bytearray(packed)
            bad[-8 + int(rng.integers(0, 4))] ^= 1 << int(rng.integers(8))
            case = Case("bad-crc", bytes(bad), REFUSE, r"gzip stream is truncated or corrupt")
        elif kind == 6:
            bad = bytearray(packed)
            bad[-4 + int(rng.integers(0, 4))] ^= 1 << int(rng.integers(8))
            case = Case("bad-length", bytes(bad), REFUSE, r"gzip stream is truncated or corrupt")
        elif kind == 7:
            flags = int(rng.integers(0, 32)) & 0b11110
            head = _gzip_header(flags, rng.bytes(int(rng.integers(0, 3000))), b"patient.nii",
                                b"DOE^JOHN")
            case = Case("header-flags", head + _deflate(raw) + trailer, ACCEPT, reference=raw)
        elif kind == 8:
            head = _gzip_header(int(rng.choice([32, 64, 128])))
            case = Case("reserved-flags", head + _deflate(raw) + trailer, REFUSE,
                        r"gzip stream is truncated or corrupt")
        elif kind == 9:
            case = Case("gzip-of-gzip", gz(packed), REFUSE, r"not a NIfTI file")
        elif kind == 10:
            case = Case("zlib-not-gzip", zlib.compress(raw), REFUSE, r"not a NIfTI file")
        elif kind == 11:
            bad = bytearray(packed)
            bad[2] = int(rng.choice([0, 7, 9, 255]))  # compression method
            case = Case("bad-method", bytes(bad), REFUSE, r"gzip stream is truncated or corrupt")
        elif kind == 12:
            bad = bytearray(packed)
            pos = int(rng.integers(10, len(bad) - 8))
            bad[pos] ^= 1 << int(rng.integers(8))
            # A flip in the final byte's padding bits changes nothing, hence EITHER.
            case = Case("flipped-deflate", bytes(bad), EITHER)
        elif kind == 13:
            case = Case("header-only", packed[: int(rng.integers(2, 11))], REFUSE,
                        r"gzip stream is truncated or corrupt")
        else:
            case = Case("magic-then-noise", b"\x1f\x8b" + rng.bytes(int(rng.integers(0, 3000))),
                        REFUSE, r"gzip stream is truncated or corrupt|not a NIfTI")
        case.name = f"gzip-{i}-{case.name}"
        out.append(case)
    return out


def _bombs(rng: np.random.Generator, n: int) -> list[Case]:
    """Streams far longer than their headers declare: refused as soon as they outgrow them."""
    out = []
    for i in range(n):
        parts = random_parts(rng)
        parts.extensions = []  # kind 1 zeroes everything after the header
        raw = encode(parts)
        total = len(raw) + int(2 ** rng.uniform(0, 30))  # up to 1 GiB past the declared end
        kind = i % 4
        if kind == 0:
            blob = BENCH.gzip_bomb(raw, total)
        elif kind == 1:  # header only, zeros where the voxels and far more should be
            blob = BENCH.gzip_bomb(raw[: parts.hdr_size + 4], total)
        elif kind == 2:  # an honest member, then a bomb member
            blob = gz(raw) + BENCH.gzip_bomb(b"", total - len(raw))
        else:  # uncompressed, trailing bytes
            blob = raw + rng.bytes(int(rng.integers(1, 100_000)))
        pattern = r"decompresses to more than|file is [\d,]+ bytes but its header declares"
        out.append(Case(f"bomb-{i}", blob, REFUSE, pattern))
    return out


def _bad_extensions(rng: np.random.Generator, n: int) -> list[Case]:
    out = []
    for i in range(n):
        parts = random_parts(rng)
        parts.extensions = [(6, rng.bytes(24))]
        ba = bytearray(encode(parts))
        pos = parts.hdr_size + 4
        fmt = f"{parts.endian}i"
        esize = int(rng.choice([-16, 0, 8, 15, 17, 48, 10_000, 2**31 - 1]))
        ba[pos : pos + 4] = struct.pack(fmt, esize)
        out.append(Case(f"extension-{i}", bytes(ba), REFUSE,
                        r"extension at byte \d+ has an invalid size|file is [\d,]+ bytes"))
    parts = random_parts(rng)
    parts.extensions = [(6, bytes(1024**2 + 8))]
    out.append(Case("extension-too-big", encode(parts), REFUSE, r"header extensions take"))
    return out


def _garbage(rng: np.random.Generator, n: int) -> list[Case]:
    out = []
    for i in range(n):
        size = int(rng.integers(0, 4000))
        blob = rng.bytes(size)
        if i % 3 == 1 and size >= 4:
            blob = struct.pack("<i", int(rng.choice([348, 540]))) + blob[4:]
        elif i % 3 == 2:
            blob = gz(blob)
        out.append(Case(f"garbage-{i}", blob, REFUSE, ""))
    return out


def all_cases() -> list[Case]:
    rng = np.random.default_rng(SEED)
    return [*_valid_cases(rng, 150), *_truncations(rng, 120), *_bit_flips(rng, 200),
            *_absurd_fields(rng, 200), *_nan_inf(rng, 60), *_gzip_oddities(rng, 150),
            *_bombs(rng, 60), *_bad_extensions(rng, 40), *_garbage(rng, 60)]


# --------------------------------------------------------------------------- running them


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    try:
        result: object = call()
    except NiftiError as exc:
        result = exc
    return result, time.perf_counter() - t0


def _outcome(result: object, label: str, problems: list[str], where: str) -> str:
    """'accepted' or the refusal message; records contract violations in ``problems``."""
    if isinstance(result, NiftiError):
        message = str(result)
        if not message.startswith(f"{label}: ") or "\n" in message:
            problems.append(f"{where}: refusal does not start with {label}: {message!r}")
        return message
    data, affine = result
    ok = (isinstance(data, np.ndarray) and data.dtype == np.float32 and data.ndim == 3
          and bool(np.isfinite(data).all()) and affine.shape == (4, 4)
          and bool(np.isfinite(affine).all()))
    if not ok:
        problems.append(f"{where}: accepted but not finite float32 3-D: {data.dtype} {data.shape}")
    return "accepted"


def _judge(case: Case | PairCase, outcomes: list[str], problems: list[str]) -> str:
    """The case's outcome (the same on both loading routes), held against what it expects."""
    if outcomes[0] != outcomes[1]:
        problems.append(f"{case.name}: routes disagree: {outcomes}")
    outcome = outcomes[0]
    if case.expect == ACCEPT and outcome != "accepted":
        problems.append(f"{case.name}: should load but: {outcome}")
    elif case.expect == REFUSE and outcome == "accepted":
        problems.append(f"{case.name}: should be refused but loaded")
    elif outcome != "accepted" and case.pattern and not re.search(case.pattern, outcome):
        problems.append(f"{case.name}: refused for the wrong reason: {outcome}")
    return outcome


def _run_single(case: Case, folder: Path, problems: list[str], slow: list[str]) -> str:
    path = folder / f"{case.name}.nii"
    path.write_bytes(case.blob)
    label = f"'{path.name}'"
    outcomes, results = [], []
    for route, source in (("path", path), ("bytes", case.blob)):
        where = f"{case.name} ({route})"
        try:
            result, seconds = _timed(lambda s=source: load_volume(s, name=path.name))
        except Exception as exc:  # the point of the suite: anything but NiftiError is a bug
            problems.append(f"{where}: unexpected {type(exc).__name__}: {exc}")
            return "crash"
        if seconds > MAX_SECONDS:
            slow.append(f"{where}: {seconds:.2f} s")
        outcomes.append(_outcome(result, label, problems, where))
        results.append(result)
    outcome = _judge(case, outcomes, problems)
    if outcome == "accepted":
        data, affine = results[0]
        for other in results[1:]:
            if not (np.array_equal(other[0], data) and np.array_equal(other[1], affine)):
                problems.append(f"{case.name}: routes give different volumes")
        if not np.array_equal(load_affine(case.blob, name=path.name), affine):
            problems.append(f"{case.name}: load_affine differs from load_volume's affine")
        if case.reference is not None:
            ref_data, ref_affine = nibabel_reference(case.reference)
            if not (np.array_equal(data, ref_data) and np.array_equal(affine, ref_affine)):
                problems.append(f"{case.name}: differs from nibabel's decoding")
    return outcome


CASES = all_cases()


def _report(problems: list[str], slow: list[str]) -> str:
    return "\n".join([f"{len(problems)} problems, {len(slow)} slow calls", *problems[:25],
                      *slow[:10]])


@pytest.mark.parametrize("category", sorted({c.name.split("-")[0] for c in CASES}))
def test_hostile_files_fail_only_with_nifti_error(category: str, tmp_path: Path) -> None:
    problems: list[str] = []
    slow: list[str] = []
    cases = [c for c in CASES if c.name.split("-")[0] == category]
    outcomes = [_run_single(case, tmp_path, problems, slow) for case in cases]
    assert not problems and not slow, _report(problems, slow)
    assert len(outcomes) == len(cases)


def test_the_suite_is_large_and_covers_both_outcomes() -> None:
    assert len(CASES) + len(PAIR_CASES) >= 1000
    assert sum(c.expect == ACCEPT for c in CASES) >= 150
    assert sum(c.expect == REFUSE for c in CASES) >= 400


@pytest.mark.parametrize("piece_voxels", [1, 5, 37])
def test_piecewise_decoding_matches_nibabel_at_any_piece_size(
        piece_voxels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of whole planes, of rows and of partial rows, every orientation."""
    monkeypatch.setattr(nifti_header, "_PIECE_VOXELS", piece_voxels)
    rng = np.random.default_rng(piece_voxels)
    for i in range(40):
        raw = encode(random_parts(rng))
        data, affine = load_volume(raw if i % 2 else gz(raw), name="p")
        ref_data, ref_affine = nibabel_reference(raw)
        np.testing.assert_array_equal(data, ref_data)
        np.testing.assert_array_equal(affine, ref_affine)


def test_read_never_asks_zlib_for_more_than_requested() -> None:
    """The stream yields exactly what was asked, even from a 1 GiB bomb."""
    bomb = BENCH.gzip_bomb(b"", 1024**3)
    stream = nifti._Stream(bomb, "'b'", nifti.NiftiLimits())
    assert stream.is_gzip
    for n in (1, 7, 544, 1 << 20, 3):
        assert len(stream.read(n)) == n
    stream.close()


# --------------------------------------------------------------------------- pairs


def _head_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = tuple(int(s) for s in rng.integers(10, 16, 3))
    axes = [np.arange(s) - (s - 1) / 2 for s in shape]
    r = np.sqrt(sum(np.meshgrid(*[a**2 for a in axes], indexing="ij")))
    radius = min(shape) / 2 - 0.5
    head, brain = r < radius, r < radius - 2
    mri = np.where(brain, 400.0, np.where(head, 150.0, 0.0)) + rng.normal(0, 3, shape)
    ct = np.where(brain, 35.0, np.where(head, 1200.0, -1000.0))
    return mri.astype(np.float32), ct.astype(np.int16), head.astype(np.uint8)


def _pair_parts(rng: np.random.Generator, arr: np.ndarray, affine: np.ndarray) -> Parts:
    return Parts(version=int(rng.choice([1, 2])), endian=str(rng.choice(["<", ">"])), data=arr,
                 dtype=arr.dtype, affine=affine)


def _store(parts: Parts, rng: np.random.Generator) -> bytes:
    raw = encode(parts)
    return raw if rng.random() < 0.5 else gz(raw)


@dataclass
class PairCase:
    name: str
    blobs: list[bytes | None]  # MRI, CT, mask (None: no mask)
    expect: str
    pattern: str = ""


def _flip_stored(parts: Parts, axis: int) -> Parts:
    """The same image stored with one voxel axis reversed (affine adjusted to match)."""
    flip = np.eye(4)
    flip[axis, axis] = -1
    flip[axis, 3] = parts.data.shape[axis] - 1
    return replace(parts, data=np.flip(parts.data, axis).copy(), affine=parts.affine @ flip)


def pair_cases() -> list[PairCase]:
    rng = np.random.default_rng(SEED + 1)
    singles = [c for c in CASES if c.expect == REFUSE]
    kinds = ["ok", "ok-no-mask", "ok-shift-1mm", "ok-flipped-storage", "shift-5mm", "shape",
             "spacing", "swapped", "ct-raw", "ct-normalised", "mask-soft", "mask-empty",
             "mask-grid", "mri-blank", "ct-nan", "broken-member"]
    out = []
    for i in range(160):
        kind = kinds[i % len(kinds)]
        mri, ct, mask = _head_pair(rng)
        affine = _random_affine(rng)
        parts = [_pair_parts(rng, a, affine) for a in (mri, ct, mask)]
        expect, pattern = REFUSE, ""
        if kind.startswith("ok"):
            expect = ACCEPT
        if kind == "ok-shift-1mm":
            moved = affine.copy()
            direction = rng.normal(size=3)
            moved[:3, 3] += direction / np.linalg.norm(direction)  # 1 mm: within the 2 allowed
            parts[1].affine = moved
        elif kind == "ok-flipped-storage":
            parts[1] = _flip_stored(parts[1], int(rng.integers(3)))
        elif kind == "shift-5mm":
            moved = affine.copy()
            moved[:3, 3] += 5.0
            parts[1].affine = moved
            pattern = r"^CT .*origins differ"
        elif kind == "shape":
            parts[1].data = np.pad(ct, ((0, 1), (0, 0), (0, 0)), constant_values=-1000)
            pattern = r"^CT .*shapes differ"
        elif kind == "spacing":
            parts[2].affine = affine @ np.diag([1.5, 1, 1, 1])
            # Flipped stored axes move the canonical origin too, so either reason is right.
            pattern = r"^mask .*not on the same voxel grid"
        elif kind == "swapped":
            parts[0], parts[1] = parts[1], parts[0]
            pattern = r"^MRI .*looks like a CT"
        elif kind == "ct-raw":
            parts[1].data = (ct.astype(np.int32) + 1024).astype(np.uint16)
            parts[1].dtype = parts[1].data.dtype
            pattern = r"^CT .*expected Hounsfield units"
        elif kind == "ct-normalised":
            parts[1].data = ((ct + 1000) / 2200).astype(np.float32)
            parts[1].dtype = parts[1].data.dtype
            pattern = r"^CT .*expected Hounsfield units"
        elif kind == "mask-soft":
            parts[2].data = (mask * 0.6).astype(np.float32)
            parts[2].dtype = parts[2].data.dtype
            pattern = r"^mask .*must be binary"
        elif kind == "mask-empty":
            parts[2].data = np.zeros_like(mask)
            pattern = r"^mask .*mask is empty"
        elif kind == "mask-grid":
            parts[2].data = mask[:-1]
            pattern = r"^mask .*not on the same voxel grid"
        elif kind == "mri-blank":
            parts[0].data = np.full_like(mri, 7.0)
            pattern = r"^MRI .*same value"
        elif kind == "ct-nan":
            parts[1].data = ct.astype(np.float32)
            parts[1].data[0, 0, 0] = np.nan
            parts[1].dtype = parts[1].data.dtype
            pattern = r"^CT .*NaN/infinite"
        blobs: list[bytes | None] = [_store(p, rng) for p in parts]
        if kind == "ok-no-mask":
            blobs[2] = None
        if kind == "broken-member":
            member = int(rng.integers(3))
            blobs[member] = singles[int(rng.integers(len(singles)))].blob
            expect = EITHER
            pattern = "^" + ("MRI", "CT", "mask")[member] + " "
        out.append(PairCase(f"pair-{i}-{kind}", blobs, expect, pattern))
    return out


PAIR_CASES = pair_cases()


def _pair_outcome(case: PairCase, folder: Path, problems: list[str], slow: list[str]) -> None:
    names = ("mri", "ct", "mask")
    paths: list[Path | None] = []
    for stem, blob in zip(names, case.blobs, strict=True):
        if blob is None:
            paths.append(None)
            continue
        paths.append(folder / f"{case.name}-{stem}.nii")
        paths[-1].write_bytes(blob)
    outcomes = []
    for route, sources in (("path", paths), ("bytes", case.blobs)):
        where = f"{case.name} ({route})"
        try:
            result, seconds = _timed(lambda s=sources: load_nifti_pair(*s, patient_id="P"))
        except Exception as exc:
            problems.append(f"{where}: unexpected {type(exc).__name__}: {exc}")
            return
        if seconds > MAX_SECONDS:
            slow.append(f"{where}: {seconds:.2f} s")
        if isinstance(result, NiftiError):
            message = str(result)
            if not re.match(r"(MRI|CT|mask) '", message) or "\n" in message:
                problems.append(f"{where}: refusal does not name the file: {message!r}")
            # Same message on both routes once the files' names are taken out.
            for p, upload in zip(paths, ("uploaded MRI", "uploaded CT", "uploaded mask"),
                                 strict=True):
                if p is not None:
                    message = message.replace(p.name, "<file>").replace(upload, "<file>")
            outcomes.append(message)
        else:
            pv: PatientVolume = result
            shapes = {pv.mri.shape, pv.ct_hu.shape, pv.mask.shape}
            if len(shapes) != 1 or pv.mask.dtype != bool or pv.ct_hu.dtype != np.float32:
                problems.append(f"{where}: inconsistent PatientVolume")
            outcomes.append("accepted")
    _judge(case, outcomes, problems)


def test_hostile_pairs_fail_only_with_nifti_error(tmp_path: Path) -> None:
    problems: list[str] = []
    slow: list[str] = []
    for case in PAIR_CASES:
        _pair_outcome(case, tmp_path, problems, slow)
    assert not problems and not slow, _report(problems, slow)


# --------------------------------------------------------------------------- resources


def test_bombs_and_the_largest_volume_measured_in_child_processes(tmp_path: Path) -> None:
    """Peak RSS of a fresh process (zlib's buffers included), per route."""
    cases = BENCH.write_cases(tmp_path, pair=False)
    results = {f"{name}/{route}": BENCH.measure_case(paths, route)
               for name, paths in cases.items() for route in ("path", "bytes")}
    out = ROOT / "test-output" / "nifti"
    out.mkdir(parents=True, exist_ok=True)
    (out / "limits.json").write_text(json.dumps(results, indent=1))
    for key, r in results.items():
        if key.startswith("bomb"):
            assert r["outcome"].startswith("refused: ") and "decompresses to more than" in \
                r["outcome"], (key, r)
            assert r["seconds"] < 1.0 and r["extra_mib"] < 100, (key, r)
        elif key.startswith("member-flood"):  # 6.8 million empty members inside 129 MiB
            assert r["outcome"].startswith("refused: ") and "more than 16 members" in \
                r["outcome"], (key, r)
            assert r["seconds"] < 1.0 and r["extra_mib"] < 100, (key, r)
        else:  # the largest accepted volume: 256³ float64 → 64 MiB of float32 and buffers
            assert r["outcome"] == "accepted 256x256x256", (key, r)
            assert r["extra_mib"] < 100 and r["seconds"] < 5.0, (key, r)
    largest = results["largest-volume/bytes"]
    worst_bomb = max((r for k, r in results.items() if k.startswith("bomb")),
                     key=lambda r: r["extra_mib"])
    print(f"\nNIfTI limits: bomb (10 GiB, {worst_bomb['file_mib']} MiB file) refused in "
          f"≤ {max(r['seconds'] for k, r in results.items() if k.startswith('bomb')):.2f} s with "
          f"≤ {worst_bomb['extra_mib']} MiB extra; largest accepted volume (256³ float64) "
          f"{largest['seconds']:.2f} s, {largest['extra_mib']} MiB extra")


# --------------------------------------------------------------------------- concurrent saves


def _marked_volume(mark: float, shape: tuple[int, int, int] = (48, 48, 24)) -> PatientVolume:
    """A volume whose MRI and CT both carry ``mark``, so a mixed folder is detectable."""
    mri = np.full(shape, mark, np.float32)
    ct = np.full(shape, -1000.0 + mark, np.float32)
    return PatientVolume(patient_id=f"p{mark:g}", mri=mri, ct_hu=ct,
                         mask=np.ones(shape, bool), spacing_mm=(1.0, 1.0, 2.0))


def _folder_marks(folder: Path) -> tuple[float, float]:
    mri = nib.load(folder / "mr.nii.gz").get_fdata()
    ct = nib.load(folder / "ct.nii.gz").get_fdata()
    assert np.unique(mri).size == 1 and np.unique(ct).size == 1
    return float(mri.flat[0]), float(ct.flat[0]) + 1000.0


def _race(jobs: list[Callable[[], object]]) -> list[object]:
    """Run ``jobs`` in threads released together; each result or the exception raised."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except Exception as exc:  # collected: the test decides which are acceptable
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_saves_of_one_id_never_mix_patients(tmp_path: Path) -> None:
    for trial in range(20):
        target = tmp_path / f"1BA{trial:03d}"
        marks = (1.0 + 2 * trial, 2.0 + 2 * trial)
        results = _race([lambda m=m, t=target: save_patient_folder(_marked_volume(m), t)
                         for m in marks])
        winners = [marks[i] for i, r in enumerate(results) if r == target]
        losers = [r for r in results if isinstance(r, FileExistsError)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert _folder_marks(target) == (winners[0], winners[0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def _upload(mark: float) -> tuple[bytes, bytes]:
    """An MRI/CT pair (gz bytes) whose MRI and CT both carry ``mark``."""
    rng = np.random.default_rng(int(mark))
    mri, ct, _ = _head_pair(rng)
    mri = np.where(mri > 100, 400.0 + mark, mri).astype(np.float32)
    ct = np.where(ct == 35, 35 + int(mark), ct).astype(np.int16)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    return tuple(gz(nib.Nifti1Image(a, affine).to_bytes()) for a in (mri, ct))


def test_concurrent_uploads_of_one_patient_number_both_saved_apart(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    saved_total = renumbered = 0
    for trial in range(6):
        marks = (10.0 + 2 * trial, 11.0 + 2 * trial)
        # Checked as the page checks them before Save is pressed.
        uploads = [(load_nifti_pair(mri, ct, None, patient_id="upload"),
                    load_affine(mri, name="uploaded MRI")) for mri, ct in map(_upload, marks)]
        number = 2 * trial + 1  # the loser of an overlap gets number + 1
        results = _race([lambda u=u, n=number: save_patient(folder, "A", n, *u, with_mask=False)
                         for u in uploads])
        saved = [r for r in results if isinstance(r, Path)]
        # Overlapping saves both succeed under different numbers; a save that starts after
        # the other finished is refused as a duplicate, exactly as a repeated click is.
        assert len(saved) == 2 or (len(saved) == 1 and isinstance(
            [r for r in results if not isinstance(r, Path)][0], FileExistsError)), results
        assert folder / f"1BA{number:03d}" in saved and len(set(saved)) == len(saved)
        renumbered += len(saved) == 2
        saved_total += len(saved)
        for result, mark in zip(results, marks, strict=True):
            if not isinstance(result, Path):
                continue
            mri = nib.load(result / "mr.nii.gz").get_fdata()
            ct = nib.load(result / "ct.nii.gz").get_fdata()
            assert mri.max() == 400.0 + mark and ct.max() == 1200.0  # this upload's MRI
            assert (35 + mark) in np.unique(ct)  # and this upload's CT, in one folder
    assert cohort_counts(folder) == {"A": saved_total}
    assert renumbered >= 1  # the overlap did happen at least once


def test_a_save_in_progress_is_not_a_patient(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    # ".aBC001" would count as hospital B if hidden folders were not skipped.
    for name in ("1BA001", ".~1BB001.0123.partial", ".aBC001"):
        save_patient_folder(_marked_volume(1.0, (8, 8, 4)), root / name)
    assert cohort_counts(root) == {"A": 1}
    assert {k: [p.name for p in v] for k, v in scan_synthrad(root).items()} == {"A": ["1BA001"]}


def test_gzip_framing_is_as_python_reads_it() -> None:
    """Members and zero padding behave as in Python's gzip module; junk after them does not."""
    raw = encode(random_parts(np.random.default_rng(3)))
    for blob in (gz(raw[:100]) + gz(raw[100:]), gz(raw) + bytes(64), gz(b"") + gz(raw)):
        assert gzip.decompress(blob) == raw
        load_volume(blob, name="ok")
    with pytest.raises(NiftiError, match=r"^'j': has data after the end of its gzip stream"):
        load_volume(gz(raw) + b"junk", name="j")
    with io.BytesIO(gz(raw) + b"junk") as f, pytest.raises(gzip.BadGzipFile):
        gzip.GzipFile(fileobj=f).read()
