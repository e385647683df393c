"""Pure helpers of the Data & centers page: slice geometry and display ranges, the page's
words, the command that trains on the uploaded cohort, and which folders may be read.

The cohort folder itself (naming, counting and saving patients) is the engine's
``engine.data.uploads``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np

from engine.data.nifti import DEFAULT_LIMITS
from engine.data.types import PatientVolume
from engine.data.uploads import uploads_folder

MIN_PATIENTS = 2  # a hospital needs one patient to train on and one held out
DATA_ROOTS_ENV = "FEDSCT_DATA_ROOTS"

PHANTOM_INTRO = (
    "By default the lab uses artificial brain scans (phantoms). Every hospital has its own "
    "scanners, so the same kind of head looks different from one hospital to the next: MRI "
    "brightness and contrast, image noise, sharpness and the field of view all vary. This "
    "difference between hospitals is what makes learning one shared model hard. Below: one "
    "patient per hospital, MRI above its CT.")
UPLOAD_INTRO = (
    "Upload one patient's **MRI** and **CT** as `.nii` or `.nii.gz`. Both must be on the same "
    "voxel grid (registered to each other) and the CT must be in Hounsfield units. A body mask "
    "(0 = background, 1 = body) is optional; without one it is derived from the CT.")
SYNTHRAD_INTRO = (
    "If you have the public SynthRAD2023 challenge data (Task 1, brain), set "
    "`data.source: synthrad` and `data.path` to the folder that directly holds the patient "
    "folders (`1BA001/mr.nii.gz`, `ct.nii.gz`, `mask.nii.gz`, …). The third letter of each "
    "patient ID (A, B, C) is its hospital. From a terminal: "
    "`fedsct run --preset demo --set data.source=synthrad --set data.path=/path/to/Task1/brain`.")
# The server's cap per uploaded file, in MB, as app.serve gives it to Streamlit (a test keeps
# the two equal: app.serve must not import the views, whose import before Streamlit's runtime
# stops the job banner's live progress). .streamlit/config.toml says why 136.
MAX_UPLOAD_MB = 136
# The loader's limits in the words the upload boxes need: their "Limit 136MB per file" is the
# transfer cap just above the loader's limit, not a second, larger one.
UPLOAD_LIMITS = (f"Each file: at most {DEFAULT_LIMITS.max_file_bytes / 2**20:.0f} MiB and "
                 f"{round(DEFAULT_LIMITS.max_voxels ** (1 / 3))}³ voxels (the boxes below show the "
                 f"upload cap, {MAX_UPLOAD_MB}MB, set just above it).")


def with_file_names(message: str, names: dict[str, str]) -> str:
    """The engine calls uploads 'uploaded MRI' etc.; name the user's own files instead."""
    for placeholder, name in names.items():
        message = message.replace(f"'{placeholder}'", f"'{name}'")
    return message


def axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of an ``(X, Y, Z)`` RAS volume as ``(Y, X)``, anterior at the top."""
    return np.flip(volume[:, :, z].T, axis=0)


def mri_window(mri: np.ndarray) -> tuple[float, float]:
    """Display range of an MRI in scanner units: 0.5th…99.5th percentile."""
    lo, hi = (float(v) for v in np.percentile(mri, [0.5, 99.5]))
    return lo, hi if hi > lo else lo + 1.0


def volume_facts(pv: PatientVolume) -> dict[str, str]:
    sx, sy, sz = pv.spacing_mm
    return {
        "Shape (voxels)": "×".join(str(s) for s in pv.mri.shape),
        "Voxel size (mm)": "×".join(f"{v:.3g}" for v in (sx, sy, sz)),
        "CT range (HU)": f"{float(pv.ct_hu.min()):.0f} to {float(pv.ct_hu.max()):.0f}",
        "Body voxels": f"{int(pv.mask.sum()):,}",
    }


COHORT_PRESET = "smoke"  # small and quick: a few uploaded patients train in about a minute


def cohort_sets(folder: Path, counts: dict[str, int]) -> list[str] | None:
    """The ``--set`` overrides that train :data:`COHORT_PRESET` on the cohort folder (every
    hospital trains on all its patients but one, held out to test), or None while a hospital
    has fewer than :data:`MIN_PATIENTS`."""
    ready = {k: n for k, n in counts.items() if n >= MIN_PATIENTS}
    if not ready or len(ready) != len(counts):
        return None
    return ["name=uploaded-cohort", "data.source=nifti", f"data.path={folder}",
            f"data.centers={len(ready)}", f"data.patients_per_center={min(ready.values()) - 1}",
            "data.heldout_per_center=1", "data.unseen_center=false"]


def run_command(folder: Path, counts: dict[str, int]) -> str | None:
    """The CLI command that trains on the folder, or None while it is not usable yet."""
    sets = cohort_sets(folder, counts)
    if sets is None:
        return None
    return f"fedsct run --preset {COHORT_PRESET} " + " ".join(
        f"--set {shlex.quote(s)}" for s in sets)


def data_roots(runs_folder: Path) -> list[Path]:
    """Folders the dashboard may read patient data from: ``$FEDSCT_DATA_ROOTS`` (separated by
    ``os.pathsep``), else the uploads folder under the runs root. Anyone who reaches the
    dashboard can type a path, so it must not let them probe the rest of the disk."""
    configured = [p for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    roots = [Path(p).expanduser() for p in configured] or [uploads_folder(runs_folder)]
    return [r.resolve() for r in roots]


def confined_patients(groups: dict[str, list[Path]], roots: list[Path]) -> dict[str, list[Path]]:
    """``groups`` (from ``scan_synthrad``) when every patient folder and every file in it
    resolves inside ``roots``; otherwise ``ValueError`` naming the first that does not: a
    symbolic link inside an allowed folder must not reach data outside it."""
    for folders in groups.values():
        for folder in folders:
            for path in (folder, *folder.iterdir()):
                if not any(path.resolve().is_relative_to(root) for root in roots):
                    raise ValueError(f"{folder.name}/{path.name if path != folder else ''} "
                                     "links outside the folders the dashboard may read; copy "
                                     "the data in instead of linking to it")
    return groups


def allowed_data_path(text: str, roots: list[Path]) -> Path:
    """The folder typed in the dashboard, resolved (``..`` and symbolic links followed), if it
    lies inside one of ``roots``; otherwise ``ValueError`` with one line that names the roots
    and says nothing about whether the folder exists."""
    try:
        path = Path(text.strip()).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        path = None
    if path is None or not any(path.is_relative_to(root) for root in roots):
        raise ValueError(f"the dashboard only reads data inside {', '.join(map(str, roots))}; "
                         f"to use another folder, add it to {DATA_ROOTS_ENV} (separate folders "
                         f"with '{os.pathsep}') and restart the dashboard")
    return path

