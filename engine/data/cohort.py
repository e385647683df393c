"""Build the federation's cohort from the configured source (phantom, SynthRAD, NIfTI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.core.config import DataConfig
from engine.data.phantom import phantom_cohort, phantom_patient
from engine.data.preprocess import volume_to_slices
from engine.data.synthrad import load_synthrad_patient, scan_synthrad
from engine.data.types import CenterData, Cohort, SliceSet

WHATIF_PREFIX = "whatif-"


def whatif_patient_id(data: DataConfig) -> str | None:
    """The cohort's id of ``data.whatif_patient`` (its folder name, marked as added)."""
    return None if data.whatif_patient is None else WHATIF_PREFIX + Path(data.whatif_patient).name


def load_cohort(data: DataConfig, seed: int,
                progress: Callable[[str], None] = lambda _msg: None) -> Cohort:
    """The cohort described by ``data`` (``source``: phantom | synthrad | nifti), with
    ``data.whatif_patient`` (if set) added to center ``data.whatif_center``'s training set."""
    cohort = _base_cohort(data, seed, progress)
    if data.whatif_patient is not None:
        _add_whatif_patient(cohort, data, progress)
    return cohort


def _add_whatif_patient(cohort: Cohort, data: DataConfig,
                        progress: Callable[[str], None]) -> None:
    """Append the what-if patient's slices (same size and count as everyone's) to the
    training patients of center ``data.whatif_center``."""
    folder = Path(data.whatif_patient or "")
    progress(f"loading the what-if patient {folder.name}")
    volume = replace(load_synthrad_patient(folder), patient_id=whatif_patient_id(data))
    center = cohort.centers[data.whatif_center]
    center.train = SliceSet.concat(
        [center.train, volume_to_slices(volume, data.image_size, data.slices_per_patient)])


def _base_cohort(data: DataConfig, seed: int, progress: Callable[[str], None]) -> Cohort:
    if data.source == "phantom":
        progress("generating phantom patients")
        return phantom_cohort(
            seed, centers=data.centers, patients_per_center=data.patients_per_center,
            heldout_per_center=data.heldout_per_center,
            slices_per_patient=data.slices_per_patient, image_size=data.image_size,
            unseen_center=data.unseen_center, unseen_patients=data.unseen_patients,
            lesion_probability=data.lesion_probability,
        )
    return _folder_cohort(data, progress)


def folder_slices(folders: list[Path], data: DataConfig,
                  progress: Callable[[str], None] = lambda _msg: None) -> SliceSet:
    """The slices of the patient folders ``folders`` (``<ID>/{mr,ct[,mask]}.nii.gz``), cut
    as ``data`` says."""
    parts = []
    for f in folders:
        progress(f"loading {f.name}")
        parts.append(volume_to_slices(load_synthrad_patient(f), data.image_size,
                                      data.slices_per_patient))
    return SliceSet.concat(parts)


@dataclass
class FolderSplit:
    """Which patient folders of a SynthRAD2023/NIfTI root the federation uses, and which not.

    Attributes:
        centers: ``(letter, training folders, held-out folders)`` per training center.
        unseen: ``(letter, folders)`` of the unseen center, if any.
        unused: every other patient folder (nobody in the federation has them), sorted.
    """

    centers: list[tuple[str, list[Path], list[Path]]]
    unseen: tuple[str, list[Path]] | None
    unused: list[Path]


def split_folders(data: DataConfig) -> FolderSplit:
    """SynthRAD2023 layout ``<root>/<ID>/{mr,ct,mask}.nii.gz``; center = ID's third letter.

    ``nifti`` uses the same layout (any folder names whose third character marks the center).
    The first ``centers`` center letters train (the first ``patients_per_center`` folders of
    each, then ``heldout_per_center`` held out); with ``unseen_center`` the next letter is
    unseen. Raises ``ValueError`` when there are too few centers or patients.
    """
    groups = scan_synthrad(Path(data.path or ""))
    letters = sorted(groups)
    need = data.centers + int(data.unseen_center)
    if len(letters) < need:
        raise ValueError(
            f"data.path {data.path!r} holds centers {letters}, but data.centers = "
            f"{data.centers}{' plus an unseen center' if data.unseen_center else ''} "
            f"needs {need}; lower data.centers"
        )
    used: set[Path] = set()
    centers = []
    for letter in letters[: data.centers]:
        folders = groups[letter]
        n_train, n_test = data.patients_per_center, data.heldout_per_center
        if len(folders) < n_train + n_test:
            raise ValueError(
                f"center {letter} has {len(folders)} patients, fewer than "
                f"data.patients_per_center + data.heldout_per_center = {n_train + n_test}"
            )
        centers.append((letter, folders[:n_train], folders[n_train : n_train + n_test]))
        used.update(folders[: n_train + n_test])
    unseen = None
    if data.unseen_center:
        letter = letters[data.centers]
        unseen = (letter, groups[letter][: data.unseen_patients])
        used.update(unseen[1])
    if data.whatif_patient is not None:
        used.add(Path(data.whatif_patient))
    taken = {p.resolve() for p in used}
    unused = sorted(p for folders in groups.values() for p in folders
                    if p.resolve() not in taken)
    return FolderSplit(centers, unseen, unused)


def _folder_cohort(data: DataConfig, progress: Callable[[str], None]) -> Cohort:
    """The federation's cohort from a SynthRAD2023/NIfTI root (see :func:`split_folders`)."""
    split = split_folders(data)

    def slices(folders: list[Path]) -> SliceSet:
        return folder_slices(folders, data, progress)

    centers = [CenterData(name=f"center-{letter}", train=slices(train), test=slices(test))
               for letter, train, test in split.centers]
    unseen = None
    if split.unseen:
        letter, folders = split.unseen
        test = slices(folders)
        unseen = CenterData(name=f"unseen-{letter}",
                            train=test.select(np.zeros(len(test), bool)), test=test)
    return Cohort(centers, unseen, description=f"SynthRAD2023 folder {data.path}")


# --------------------------------------------------------------------------- the attacker's data

# Phantom patients the attacker holds come from another seed and four scanner profiles that
# no hospital has (centers are 0 … 64), sampled with the federation's slice protocol.
ATTACKER_SEED_OFFSET = 1_000_003
ATTACKER_PROFILES = (90, 91, 92, 93)
# Two patients for the average anatomy and its principal components, one for the control.
MIN_ATTACKER_PATIENTS = 3
# Slices of the control patient, at least: the calibration control's uploads are drawn from
# them (as many slices as the attacked upload holds, see control_slices).
CONTROL_SLICES = 8


def control_slices(data: DataConfig, uploads: int = 1) -> int:
    """Slices of the control patient: enough for ``uploads`` hospitals' whole training sets
    plus a what-if patient (at most 128 per upload). ``uploads`` is the number of hospitals
    whose updates the attacked view sums: 1 for one hospital's upload, every hospital under
    secure aggregation (the server holds only the round's aggregate)."""
    return uploads * min(128, max(CONTROL_SLICES, (data.patients_per_center + 1)
                                  * data.slices_per_patient))


@dataclass
class AttackerData:
    """Patients an attacker plausibly holds: the federation's kind of data, none of its
    patients.

    Attributes:
        public: ``(N, 1, H, W)`` slices of the attacker's public cohort (its average anatomy
            and principal components come from these).
        control: one more patient, kept out of ``public``, with :func:`control_slices`
            slices: the calibration controls' uploads are drawn from them.
    """

    public: SliceSet
    control: SliceSet


def attacker_data(data: DataConfig, seed: int, min_slices: int = 160,
                  progress: Callable[[str], None] = lambda _msg: None, *,
                  control_uploads: int = 1) -> AttackerData:
    """The attacker's patients from the same source as the federation's data; the control
    patient has :func:`control_slices` ``(data, control_uploads)`` slices.

    ``phantom``: patients of another seed and scanner profiles (at least two per profile and
    ``min_slices`` slices). ``synthrad`` / ``nifti``: the patient folders under ``data.path``
    that no hospital trains on or holds out and that are not the unseen center's or the
    what-if patient (at least :data:`MIN_ATTACKER_PATIENTS`; the last is the control).
    Raises ``ValueError`` naming the shortfall when there are too few.
    """
    spp = data.slices_per_patient
    if data.source == "phantom":
        per_profile = max(2, -(-min_slices // (len(ATTACKER_PROFILES) * spp)))

        def patient(profile: int, index: int, n_slices: int = spp) -> SliceSet:
            return phantom_patient(seed + ATTACKER_SEED_OFFSET, profile, index,
                                   image_size=data.image_size, n_slices=n_slices)

        public = SliceSet.concat([patient(c, p) for c in ATTACKER_PROFILES
                                  for p in range(per_profile)])
        return AttackerData(public, patient(ATTACKER_PROFILES[0], per_profile,
                                            control_slices(data, control_uploads)))
    unused = split_folders(data).unused
    if len(unused) < MIN_ATTACKER_PATIENTS:
        raise ValueError(
            f"gradient inversion needs patients the attacker holds: {len(unused)} patient "
            f"folder(s) under data.path = {data.path!r} belong to no hospital, at least "
            f"{MIN_ATTACKER_PATIENTS} are needed ({MIN_ATTACKER_PATIENTS - 1} for the "
            "attacker's average anatomy, 1 for the calibration control); add patient "
            "folders or lower data.patients_per_center / data.heldout_per_center")
    wanted = max(MIN_ATTACKER_PATIENTS - 1, -(-min_slices // spp))
    public = unused[: min(wanted, len(unused) - 1)]
    control = data.model_copy(update={"slices_per_patient": control_slices(data,
                                                                           control_uploads)})
    return AttackerData(folder_slices(public, data, progress),
                        folder_slices([unused[len(public)]], control, progress))


# --------------------------------------------------------------------------- the server's root set

_ROOT_FIRST = 20_000  # patient indices far from every hospital's own and the references'


def root_slices(data: DataConfig, seed: int, patients: int,
                progress: Callable[[str], None] = lambda _msg: None) -> SliceSet:
    """FLTrust's root set: ``patients`` clean patients the server holds itself. Phantom: new
    patients drawn in turn from each hospital's scanner profile (a server that collected a
    few scans at every site). ``synthrad`` / ``nifti``: the first patient folders under
    ``data.path`` that no hospital trains on or holds out. Raises ``ValueError`` naming the
    shortfall when there are too few."""
    if data.source == "phantom":
        return SliceSet.concat([
            phantom_patient(seed, k % data.centers, _ROOT_FIRST + k, image_size=data.image_size,
                            n_slices=data.slices_per_patient,
                            lesion_probability=data.lesion_probability)
            for k in range(patients)])
    unused = split_folders(data).unused
    if len(unused) < patients:
        raise ValueError(
            f"defenses.fltrust_root_patients = {patients} needs that many patient folders "
            f"under data.path = {data.path!r} that no hospital uses; {len(unused)} are left: "
            "lower it, or data.patients_per_center / data.heldout_per_center")
    return folder_slices(unused[:patients], data, progress)


# --------------------------------------------------------------------------- reference patients

# Phantom patients of a scanner profile generated for the leak test's null (never trained on,
# never held by the attacker): with the uploaded patient and the held-out ones, 121 or more
# patients let the permutation test reach p ≤ 0.01 (not at its edge) for one uploaded patient.
REFERENCE_PATIENTS = 119
_REFERENCE_FIRST = 10_000  # patient indices far from every hospital's own


def reference_patients(data: DataConfig, seed: int, cohort: Cohort, center: int | None,
                       attacker: AttackerData) -> SliceSet:
    """Unrelated patients as alike the uploaded ones as the data allow, for the null of
    :func:`reconstruction_metrics.leak_test` (the evaluator's, not the attacker's knowledge).

    ``center``: the hospital's index, or ``None`` for the calibration control. Phantom: the
    hospital's held-out patients plus :data:`REFERENCE_PATIENTS` more of its scanner profile
    (the control: that many of the control's profile). SynthRAD / NIfTI folders: the
    hospital's held-out patients and the attacker's public patients (the control: the
    attacker's public patients).
    """
    if data.source == "phantom":
        # Generated as the patients they stand in for (the attacker's with the default
        # lesion rate, the hospital's with the configured one).
        kind = ({"seed": seed + ATTACKER_SEED_OFFSET, "center": ATTACKER_PROFILES[0],
                 "n_slices": control_slices(data)} if center is None else
                {"seed": seed, "center": center, "n_slices": data.slices_per_patient,
                 "lesion_probability": data.lesion_probability})
        made = [phantom_patient(patient=_REFERENCE_FIRST + i, image_size=data.image_size,
                                **kind) for i in range(REFERENCE_PATIENTS)]
        return SliceSet.concat(made if center is None else [cohort.centers[center].test, *made])
    return (attacker.public if center is None
            else SliceSet.concat([cohort.centers[center].test, attacker.public]))


def pooled_reference_patients(data: DataConfig, seed: int, cohort: Cohort,
                              attacker: AttackerData) -> SliceSet:
    """The references of every hospital together, for a reconstruction of the round's
    aggregate (its originals come from every hospital): phantom, each hospital's
    :func:`reference_patients`; folders, every hospital's held-out patients and the
    attacker's public patients (once)."""
    if data.source == "phantom":
        return SliceSet.concat([reference_patients(data, seed, cohort, k, attacker)
                                for k in range(len(cohort.centers))])
    return SliceSet.concat([*(c.test for c in cohort.centers), attacker.public])
