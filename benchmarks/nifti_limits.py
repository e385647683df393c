"""Refusal time and peak memory for NIfTI decompression bombs, and the cost of the largest
volume the loader accepts (``engine.data.nifti``, default ``NiftiLimits``).

    python -m benchmarks.nifti_limits            # JSON, one entry per case and route
    python -m benchmarks.nifti_limits --quick    # without the 256³ MRI/CT(/mask) pairs

Every case runs in a fresh child process that imports the loader, reads the file's bytes (for
the upload route: Streamlit holds them anyway), then measures the wall time of one call and
its peak resident memory above what the process held just before: ``VmHWM`` reset through
``/proc/self/clear_refs`` on Linux; where that is not allowed, the lifetime peak
``ru_maxrss``, which can only overstate (without ``/proc``, e.g. macOS, it is approximate).

Cases:

* ``bomb-small-header``: a valid gzip file (correct CRC and length) of an 8×8×8 int16 header
  followed by 10 GiB of zeros, about 10 MB on disk;
* ``bomb-max-header``: the same with a header declaring the largest acceptable volume
  (256³ float32), so the loader decodes 64 MiB before the stream outgrows the header;
* ``largest-volume``: an honest 256³ float64 ``.nii.gz`` (128 MiB of voxels, integer values);
* ``largest-pair``: MRI (float32), CT (int16, HU) and mask (uint8) at 256³ through
  ``load_nifti_pair`` as the upload page calls it;
* ``largest-pair-derived-mask``: the same MRI and CT without a mask, which is then derived
  from the CT (connected components, closing, hole filling).
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

MIB = 1024**2
BOMB_BYTES = 10 * 1024**3
MAX_SIDE = 256

_CHILD = r"""
import gc, json, re, resource, sys, time
from pathlib import Path
from engine.data.nifti import NiftiError, load_nifti_pair, load_volume

def status_kib(key):
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(key + r":\s+(\d+)", text)
    return int(m.group(1)) if m else None

def max_rss_kib():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes there, KiB on Linux

paths, route = json.loads(sys.argv[1]), sys.argv[2]
sources = [Path(p).read_bytes() for p in paths] if route == "bytes" else [Path(p) for p in paths]
gc.collect()
try:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
before = status_kib("VmRSS")
if before is None:
    before = max_rss_kib()
t0 = time.perf_counter()
try:
    if len(sources) == 1:
        data, _ = load_volume(sources[0], name="case")
        outcome = "accepted " + "x".join(map(str, data.shape))
    else:
        pv = load_nifti_pair(*sources, patient_id="case")
        outcome = "accepted pair " + "x".join(map(str, pv.mri.shape))
except NiftiError as exc:
    outcome = "refused: " + str(exc)
seconds = time.perf_counter() - t0
peak = status_kib("VmHWM") if reset else None
if peak is None:
    peak = max_rss_kib()
print(json.dumps({"seconds": round(seconds, 3), "extra_mib": round((peak - before) / 1024, 1),
                  "peak_reset": reset, "outcome": outcome[:160]}))
"""


def header_bytes(shape: tuple[int, ...], dtype: type | np.dtype) -> bytes:
    """A valid single-file NIfTI-1 header (1 mm voxels) plus the 4-byte extension flag."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), code=1)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    hdr["magic"] = b"n+1"
    return hdr.binaryblock + bytes(4)


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B), as zlib's crc32_combine (GF(2) matrices):
    lets a 10 GiB bomb carry a correct trailer without hashing 10 GiB."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = [_gf2_times(odd, odd[n]) for n in range(32)]  # two zero bits
    odd = [_gf2_times(even, even[n]) for n in range(32)]  # four zero bits
    while True:
        even = [_gf2_times(odd, odd[n]) for n in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = [_gf2_times(even, even[n]) for n in range(32)]
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def gzip_bomb(prefix: bytes, total: int) -> bytes:
    """A valid gzip member of ``prefix`` followed by zeros up to ``total`` bytes.

    After a full flush deflate restarts from scratch, so every MiB of zeros compresses to the
    same ~1 KiB block, which is simply repeated: 10 GiB cost 10 MB and no compression time.
    """
    zeros = total - len(prefix)
    blocks, rest = divmod(zeros, MIB)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the gzip framing is ours
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(MIB)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(bytes(rest)) + comp.flush()
    # CRC of `blocks` MiB of zeros by doubling (zeros commute, so order does not matter).
    crc_zeros, power, power_len, todo = 0, zlib.crc32(bytes(MIB)), MIB, blocks
    while todo:
        if todo & 1:
            crc_zeros = crc32_combine(crc_zeros, power, power_len)
        power = crc32_combine(power, power, power_len)
        power_len *= 2
        todo >>= 1
    crc_zeros = crc32_combine(crc_zeros, zlib.crc32(bytes(rest)), rest)
    crc = crc32_combine(zlib.crc32(prefix), crc_zeros, zeros)
    framing = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x02\xff"
    trailer = struct.pack("<II", crc, total & 0xFFFFFFFF)
    return framing + head + block * blocks + tail + trailer


def _head_arrays(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ball "head": MRI float32, CT int16 in HU (air, bone shell, brain), mask uint8."""
    axis = (np.arange(side, dtype=np.float32) - (side - 1) / 2) ** 2
    r2 = axis[:, None, None] + axis[None, :, None] + axis[None, None, :]
    outer, inner = (0.45 * side) ** 2, (0.38 * side) ** 2
    head, brain = r2 < outer, r2 < inner
    del r2
    mri = np.where(brain, 400.0, np.where(head, 150.0, 0.0)).astype(np.float32)
    ct = np.where(brain, 35, np.where(head, 1200, -1000)).astype(np.int16)
    return mri, ct, head.astype(np.uint8)


def write_cases(folder: Path, *, pair: bool) -> dict[str, list[Path]]:
    """Build the benchmark's files in ``folder``; case name → files (one, or MRI/CT/mask)."""
    cases: dict[str, list[Path]] = {}
    for name, shape, dtype in (("bomb-small-header", (8, 8, 8), np.int16),
                               ("bomb-max-header", (MAX_SIDE,) * 3, np.float32)):
        path = folder / f"{name}.nii.gz"
        path.write_bytes(gzip_bomb(header_bytes(shape, dtype), BOMB_BYTES))
        cases[name] = [path]
    # Empty 20-byte gzip members filling the size limit before a valid image: no bomb (each
    # inflates to nothing), but millions of members to start.
    path = folder / "member-flood.nii.gz"
    empty = gzip.compress(b"")
    with open(path, "wb") as f:
        f.write(empty * ((129 * MIB) // len(empty)))
        f.write(gzip.compress(header_bytes((8, 8, 8), np.int16) + bytes(8 * 8 * 8 * 2)))
    cases["member-flood"] = [path]
    side = MAX_SIDE
    axis = np.arange(side, dtype=np.float64)
    volume = np.floor(np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2
                              + axis[None, None, :] ** 2))
    path = folder / "largest-volume.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header_bytes(volume.shape, np.float64))
        f.write(volume.tobytes(order="F"))
    del volume
    cases["largest-volume"] = [path]
    if pair:
        paths = []
        for stem, array in zip(("mr", "ct", "mask"), _head_arrays(side), strict=True):
            paths.append(folder / f"pair-{stem}.nii.gz")
            nib.save(nib.Nifti1Image(array, np.eye(4)), paths[-1])
        cases["largest-pair"] = paths
        cases["largest-pair-derived-mask"] = paths[:2]
    return cases


def measure_case(paths: list[Path], route: str) -> dict:
    """One load in a fresh child process; its time, peak extra memory and outcome."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([str(p) for p in paths]), route],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["file_mib"] = round(sum(p.stat().st_size for p in paths) / MIB, 2)
    return result


def measure(pair: bool = True) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in write_cases(Path(tmp), pair=pair).items():
            for route in ("path", "bytes"):
                results[f"{name}/{route}"] = measure_case(paths, route)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 256³ MRI/CT(/mask) pairs")
    args = parser.parse_args()
    print(json.dumps(measure(pair=not args.quick), indent=1))


if __name__ == "__main__":
    main()
