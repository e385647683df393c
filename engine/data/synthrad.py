"""SynthRAD2023 Task 1 (brain) folder layout.

Layout: ``<root>/<ID>/{mr,ct,mask}.nii.gz`` with IDs like ``1BA001``: task digit, ``B`` for
brain, center letter (A/B/C), three-digit patient number. The center is the third character
of the ID, which is what splits the challenge data into federated "hospitals".
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.data.nifti import DEFAULT_LIMITS, NiftiError, NiftiLimits, load_nifti_pair
from engine.data.types import PatientVolume

_STRICT_ID = re.compile(r"^\d[A-Z][A-Z]\d{3}$")
_LAYOUT = (
    "expected <root>/<patient ID>/{mr,ct,mask}.nii.gz with IDs like 1BA001 "
    "(third character = center letter), e.g. Task1/brain/1BA001/mr.nii.gz"
)


def _find(folder: Path, stem: str) -> Path | None:
    """``stem.nii.gz``, else ``stem.nii`` (some re-exports drop the compression)."""
    for suffix in (".nii.gz", ".nii"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _missing(folder: Path) -> list[str]:
    return [f"{stem}.nii.gz" for stem in ("mr", "ct") if _find(folder, stem) is None]


def _looks_like_patient(folder: Path) -> bool:
    name = folder.name
    if name.startswith("."):
        return False  # hidden: e.g. a save still in progress (nifti.save_patient_folder)
    if _STRICT_ID.match(name):
        return True
    # Lenient: renamed/extra cohorts still count if the center letter and images are there.
    return len(name) >= 3 and name[2].isalpha() and not _missing(folder)


def scan_synthrad(root: str | Path) -> dict[str, list[Path]]:
    """Group SynthRAD2023 brain patient folders by center.

    Args:
        root: folder that directly holds the patient folders (e.g. ``Task1/brain``).

    Returns:
        center letter (upper case) → sorted list of patient folders, centers sorted.

    Raises:
        NiftiError: root missing, no patient folder, or a patient folder without
            ``mr.nii.gz``/``ct.nii.gz``. Folders that are not patients (e.g. ``overview``,
            or hidden ones such as a save still in progress) are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise NiftiError(
            f"SynthRAD root '{root}' does not exist or is not a folder; point it at the folder "
            f"that holds the patient folders ({_LAYOUT})"
        )
    patients = sorted(p for p in root.iterdir() if p.is_dir() and _looks_like_patient(p))
    if not patients:
        hint = ""
        if (root / "brain").is_dir():
            hint = f"; did you mean '{root / 'brain'}'?"
        raise NiftiError(f"SynthRAD root '{root}' holds no patient folder: {_LAYOUT}{hint}")
    incomplete = [f"{p.name} lacks {', '.join(_missing(p))}" for p in patients if _missing(p)]
    if incomplete:
        raise NiftiError(
            f"SynthRAD root '{root}': incomplete patient folders ({'; '.join(incomplete)}); "
            f"every patient needs mr.nii.gz and ct.nii.gz (mask.nii.gz optional). Restore the "
            f"files or move those folders out of the root"
        )
    centers: dict[str, list[Path]] = {}
    for p in patients:
        centers.setdefault(p.name[2].upper(), []).append(p)
    return dict(sorted(centers.items()))


def load_synthrad_patient(folder: Path, limits: NiftiLimits = DEFAULT_LIMITS) -> PatientVolume:
    """Load one SynthRAD2023 patient folder; ``patient_id`` is the folder name.

    Returns:
        PatientVolume with ``(X, Y, Z)`` float32 RAS MRI and CT (HU); the mask comes from
        ``mask.nii.gz`` when present, otherwise it is derived from the CT.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NiftiError(f"SynthRAD patient folder '{folder}' does not exist; {_LAYOUT}")
    missing = _missing(folder)
    if missing:
        raise NiftiError(
            f"SynthRAD patient folder '{folder.name}' lacks {', '.join(missing)} "
            f"(found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'}); "
            f"every patient needs mr.nii.gz and ct.nii.gz, mask.nii.gz is optional"
        )
    mr, ct = _find(folder, "mr"), _find(folder, "ct")
    assert mr is not None and ct is not None  # guaranteed by the _missing check above
    return load_nifti_pair(mr, ct, _find(folder, "mask"), patient_id=folder.name, limits=limits)
