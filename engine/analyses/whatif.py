"""What-if for one patient: would a patient the federation trained on be exposed?

A finished run whose config sets ``data.whatif_patient`` has that patient among the
training patients of center ``data.whatif_center``. This module reads the run's attack
outputs and answers for that one patient:

* membership: the patient's score (the mean of its slices' scores under the attack the run's
  membership verdict rests on: the global-model attack under secure aggregation, where a
  hospital's own upload is masked) ranked against the patients nobody trained on (every
  center's held-out patients), with how often a never-trained patient ranks as high;
* reconstruction: how close the gradient-inversion attack's images, matched to the
  patient's own slices, come to them (SSIM, unitless), judged by the leak test against
  unrelated patients' slices under the same matching.

Nothing here sees more than the attacks did: the scores and images are theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.attacks.inversion import AGGREGATE, AttackerPrior
from engine.attacks.inversion_scenario import inversion_verdict, score_reconstruction
from engine.core.config import ExperimentConfig
from engine.core.units import unit_to_hu
from engine.data.cohort import AttackerData, reference_patients, whatif_patient_id
from engine.data.types import Cohort, SliceSet

# Share of never-trained patients the what-if patient must outrank to count as exposed.
EXPOSED_RANK = 0.9


def patient_scores(scores: np.ndarray, patient_ids: np.ndarray) -> dict[str, float]:
    """Patient id → mean score of its slices. ``scores``, ``patient_ids``: ``(N,)``."""
    ids = list(dict.fromkeys(patient_ids.tolist()))
    return {p: float(np.mean(scores[patient_ids == p])) for p in ids}


def chance_rate(nonmembers: int) -> float:
    """How often a patient nobody trained on reaches :data:`EXPOSED_RANK` among
    ``nonmembers`` others by chance (all exchangeable, no ties): it must outrank
    ⌈0.9·n⌉ of them, which (n − ⌈0.9·n⌉ + 1) of the n + 1 equally likely ranks do."""
    need = int(np.ceil(EXPOSED_RANK * nonmembers - 1e-9))
    return (nonmembers - need + 1) / (nonmembers + 1)


def patient_exposure(score: float, nonmember_scores: np.ndarray) -> dict[str, Any]:
    """Where one patient's membership score falls among never-trained patients' scores.

    Returns ``rank`` (share of non-members scored strictly lower, ties count half, in
    [0, 1]), ``exposed`` (rank ≥ :data:`EXPOSED_RANK`), the number of non-members and
    ``chance_rate`` (how often a never-trained patient would be called exposed).
    """
    ref = np.asarray(nonmember_scores, dtype=float)
    if ref.size == 0:
        raise ValueError("patient_exposure needs at least one non-member score")
    rank = float(((ref < score).sum() + 0.5 * (ref == score).sum()) / ref.size)
    return {"rank": rank, "exposed": rank >= EXPOSED_RANK, "nonmembers": int(ref.size),
            "chance_rate": chance_rate(int(ref.size))}


def whatif_membership(run_dir: Path, cfg: ExperimentConfig, patient: str,
                      attack: str | None = None) -> dict[str, Any]:
    """The what-if patient's membership score vs the non-member patients of every center,
    under ``attack`` (the attack the run's membership verdict rests on: the global-model
    attack under secure aggregation, where hospitals' own uploads are masked; default the
    configured headline attack)."""
    mia = cfg.attacks.membership
    attack = attack or f"{mia.variant}/{mia.score}"
    with np.load(Path(run_dir) / "mia" / "scores.npz", allow_pickle=False) as z:
        centers = [k.removeprefix("members__") for k in z.files if k.startswith("members__")]
        own: float | None = None
        members, nonmembers = [], []
        for c in centers:
            ids, is_member = z[f"patients__{c}"], z[f"members__{c}"]
            per_patient = patient_scores(z[f"{attack}__{c}"], ids)
            for p, s in per_patient.items():
                member = bool(is_member[ids == p][0])
                if p == patient:
                    own = s
                elif member:
                    members.append(s)
                else:
                    nonmembers.append(s)
    if own is None:
        raise ValueError(f"the membership attack's scores hold no patient {patient!r}")
    return {"attack": attack, "score": own, **patient_exposure(own, np.array(nonmembers)),
            "member_scores": members, "nonmember_scores": nonmembers}


def whatif_reconstruction(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort,
                          attacker: AttackerData, patient: str,
                          calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """Inversion metrics of the reconstructions matched to the patient's own slices, the
    leak test on them (against the hospital's reference patients, each original at its level
    in the patient) and their verdict (``leak`` / ``no_leak`` / ``inconclusive``, with the
    run's calibration controls), or ``None`` when the run did not attack the patient's
    center. Under secure aggregation the run inverted the round's aggregate, whose
    reconstructions are matched to every hospital's slices: the patient's are among them."""
    index = cfg.data.whatif_center
    folder = Path(run_dir) / "inversion"
    path = next((p for p in (folder / f"{cohort.centers[index].name}.npz",
                             folder / f"{AGGREGATE}.npz") if p.is_file()), None)
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as z:
        ids = z["patient_ids"]
        own = [(int(i), int(j)) for i, j in z["pairs"] if ids[j] == patient]
        if not own:  # more originals than reconstructions: none landed on this patient
            return {"pairs": [], "n": 0}
        rec = [i for i, _ in own]
        tru = [j for _, j in own]
        mine = np.flatnonzero(ids == patient)
        levels = np.array([(int(np.flatnonzero(mine == j)[0]) + 0.5) / len(mine) for j in tru])
        truth = SliceSet(z["true_mri"][tru], unit_to_hu(z["true_ct_unit"][tru]), z["mask"][tru],
                         ids[tru].astype(object))
        prior = AttackerPrior(z["prior_mri"], z["prior_ct_unit"], np.zeros((0,)))
        got = score_reconstruction(z["mri"][rec], z["ct_unit"][rec], truth, prior,
                                   reference_patients(cfg.data, cfg.seed, cohort, index,
                                                      attacker), levels)
    out = {k: got[k] for k in ("ssim", "ssim_body", "ssim_ct", "psnr_db", "floor_ssim",
                               "floor_ssim_body", "gain", "threshold", "leak",
                               "null_ssim_body", "p_value", "reference_patients")}
    out |= {"n": len(own), "pairs": own}
    return out | {"verdict": inversion_verdict({patient: out}, calibration)}


def run_whatif(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort,
               inversion: dict[str, Any] | None = None,
               attacker: AttackerData | None = None,
               mia: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``whatif`` block of ``summary.json`` for a run with ``data.whatif_patient``;
    ``inversion`` is the run's ``inversion`` block (its calibration decides whether "not
    rebuilt" may be read as "no leak")."""
    patient = whatif_patient_id(cfg.data)
    if patient is None:
        raise ValueError("run_whatif needs data.whatif_patient")
    center = cohort.centers[cfg.data.whatif_center].name
    out: dict[str, Any] = {"patient": patient, "center": center,
                           "membership": None, "reconstruction": None}
    if cfg.attacks.membership.enabled:
        out["membership"] = whatif_membership(run_dir, cfg, patient,
                                              (mia or {}).get("verdict_attack"))
    if cfg.attacks.inversion.enabled:
        if attacker is None:
            raise ValueError("run_whatif needs the attacker's data to judge a reconstruction")
        out["reconstruction"] = whatif_reconstruction(
            run_dir, cfg, cohort, attacker, patient, (inversion or {}).get("calibration"))
    return out
