"""The catalogue of named experiment presets, and building a config from a preset.

Names are a public interface (``fedsct run --preset NAME``). The sweeps built on them are
in :mod:`engine.orchestration.sweep_catalogue`, the study's cells in
:mod:`engine.orchestration.study_catalogue`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from engine.core.config import ConfigError, ExperimentConfig, config_from
from engine.core.config.echo import unknown_name

_MIA_BASE: dict[str, Any] = {
    "name": "mia-paper",
    "data": {"centers": 4, "patients_per_center": 2, "heldout_per_center": 2,
             "slices_per_patient": 12, "image_size": 64},
    "model": {"channels": [16, 32, 64, 128], "num_res_units": 2},
    "federation": {"rounds": 20, "local_epochs": 15, "batch_size": 8, "lr": 3e-3,
                   "server_view_rounds": list(range(11, 21))},
    "attacks": {"membership": {"enabled": True, "rounds": "all"}},
}

# The study's model and local training; each client uploads one local step on one slice (B=1),
# the easiest target for gradient inversion. Round 1 is attacked.
_STUDY_MODEL_B1: dict[str, Any] = {
    "data": {"centers": 4, "patients_per_center": 1, "heldout_per_center": 1,
             "slices_per_patient": 1, "image_size": 64},
    "model": {"channels": [16, 32, 64, 128], "num_res_units": 2, "norm": "instance"},
    "federation": {"rounds": 1, "local_epochs": 1, "batch_size": 1, "lr": 2e-3,
                   "loss": "l1", "optimizer": "adam", "server_view_rounds": [1]},
}

_INVERSION_EASY: dict[str, Any] = {
    "name": "inversion-easy",
    "data": {"centers": 3, "patients_per_center": 1, "heldout_per_center": 1,
             "slices_per_patient": 1, "image_size": 32},
    "model": {"channels": [8, 16, 32], "num_res_units": 1, "norm": "none"},
    "federation": {"rounds": 30, "local_epochs": 1, "batch_size": 1, "lr": 0.05,
                   "loss": "mse", "optimizer": "sgd", "server_view_rounds": [1]},
    "attacks": {"inversion": {"enabled": True, "method": "ig", "prior": "pca",
                              "components": 40, "distance": "cosine_layers",
                              "tv_weight": 0.0, "iterations": 1000, "restarts": 8,
                              "target_round": "first", "target_center": "all"}},
}

# A federation small enough for a sweep of ~100 runs: 4 centers, 32 px, 20 rounds (~7 s).
POISON_BASE: dict[str, Any] = {
    "name": "poison-base",
    "data": {"centers": 4, "patients_per_center": 3, "heldout_per_center": 1,
             "slices_per_patient": 8, "image_size": 32},
    "model": {"channels": [8, 16, 32], "num_res_units": 1},
    "federation": {"rounds": 20, "local_epochs": 4, "batch_size": 8, "lr": 1e-2,
                   "server_view_rounds": "none"},
}

def _hospitals(n: int, name: str) -> dict[str, Any]:
    """The poisoning studies' federation with ``n`` hospitals, named ``name``."""
    return {**POISON_BASE, "name": name, "data": {**POISON_BASE["data"], "centers": n}}


# A backdoor against the poisoning studies' federation: more held-out patients (the verdict's
# interval is over patients; nobody trains on them) and an unseen hospital, whose triggered
# slices are scored too. The boost is modest (×2 from round 1): a full model replacement
# (×4) implants as well but costs the clean error 14–28 % at this size, which would show.
BACKDOOR_DEMO: dict[str, Any] = {
    **POISON_BASE, "name": "backdoor-demo",
    "data": {**POISON_BASE["data"], "heldout_per_center": 3, "unseen_center": True,
             "unseen_patients": 2},
    "attacks": {"backdoor": {"enabled": True, "attack": "model_replacement",
                             "malicious_centers": [0], "boost": 2.0}},
}

# Patient-level DP-SGD adds noise of σC to the sum of the sampled patients' clipped
# gradients, so the noise each step carries shrinks with the patients sampled per step (qP),
# and averaging the hospitals' updates shrinks it by √n: for the same patients in all, fewer
# and larger hospitals put less noise in the average. 8 hospitals × 256 patients, q ¼ (64 patients
# a step), 4 steps a round; membership on the last 3 rounds (its cost grows with patients).
_DP_SGD_FRONTIER: dict[str, Any] = {
    **POISON_BASE, "name": "dp-frontier-patients",
    "data": {**POISON_BASE["data"], "centers": 8, "patients_per_center": 256,
             "heldout_per_center": 8, "slices_per_patient": 2},
    "federation": {**POISON_BASE["federation"], "local_epochs": 1, "batch_size": 128,
                   "server_view_rounds": [18, 19, 20]},
    "defenses": {"dp": {"enabled": True, "level": "sample", "clip_norm": 1.0,
                        "target_epsilon": 8.0}},
    "attacks": {"membership": {"enabled": True, "rounds": "all", "balance": False}},
}

# Membership inference with a patient-level sample that can carry a verdict: many held-out
# patients (cheap: nobody trains on them), all kept (no balancing), few slices each.
_MIA_EVIDENCE: dict[str, Any] = {
    "name": "mia-evidence",
    "data": {"centers": 4, "patients_per_center": 5, "heldout_per_center": 10,
             "slices_per_patient": 4, "image_size": 48},
    "model": {"channels": [16, 32, 64], "num_res_units": 1},
    "federation": {"rounds": 12, "local_epochs": 15, "batch_size": 8, "lr": 3e-3,
                   "server_view_rounds": list(range(7, 13))},
    "attacks": {"membership": {"enabled": True, "rounds": "all", "balance": False}},
}

# Live demos: the study's recipe at a size that finishes in about a minute on 2 CPUs, results
# after every round; membership inference on the last rounds.
_STUDY_DEMO: dict[str, Any] = {
    "name": "study-setup",
    "data": {"centers": 4, "patients_per_center": 2, "heldout_per_center": 2,
             "slices_per_patient": 8, "image_size": 48},
    "model": {"channels": [16, 32, 64], "num_res_units": 1},
    "federation": {"rounds": 12, "local_epochs": 15, "batch_size": 8, "lr": 3e-3,
                   "server_view_rounds": list(range(7, 13))},
    "attacks": {"membership": {"enabled": True, "rounds": "all", "bootstrap": 200}},
}

# The study-setup demo with one patient's attacks: membership of every patient (the what-if
# patient's score is read from it) and a reconstruction attempt on the patient's hospital's
# round-7 update. Its 15 local epochs make each attack iteration ~2 s on 2 CPUs, hence the
# small budget and one calibration control at that difficulty (the page says so); the page
# sets data.whatif_patient and the target center.
_WHATIF: dict[str, Any] = {
    **_STUDY_DEMO, "name": "whatif",
    "attacks": {"membership": _STUDY_DEMO["attacks"]["membership"],
                "inversion": {"enabled": True, "method": "ig", "iterations": 50,
                              "restarts": 1, "target_round": "first", "target_center": 0,
                              "snapshot_every": 0, "control_trials": 1}},
}
# What the What-if page compares against: the hardened demo's defenses.
HARDENED_DEFENSES: dict[str, Any] = {"secure_aggregation": True,
                                     "dp": {"enabled": True, "clip_norm": 5.0,
                                            "noise_multiplier": 0.001}}


def _noisy_upload(noise_std: float, seeds: int = 1) -> dict[str, Any]:
    """``attacks`` overrides: center 0 adds N(0, noise_std²) to every uploaded parameter; the
    verdict rests on ``seeds`` seeds."""
    return {"poisoning": {"enabled": True, "kind": "update_noise", "malicious_centers": [0],
                          "noise_std": noise_std, "seeds": seeds}}


# The privacy audit's federation: small enough that an audit at one ε takes seconds; every
# round in the server view (the patient-level audit reads Hospital A's uploads there).
_DP_AUDIT: dict[str, Any] = {
    "name": "dp-audit",
    "data": {"centers": 4, "patients_per_center": 3, "heldout_per_center": 1,
             "slices_per_patient": 8, "image_size": 32},
    "model": {"channels": [8, 16, 32], "num_res_units": 1},
    "federation": {"rounds": 10, "local_epochs": 2, "batch_size": 8, "lr": 1e-2,
                   "server_view_rounds": "all"},
    "defenses": {"dp": {"enabled": True, "level": "client", "clip_norm": 1.0,
                        "target_epsilon": 8.0}},
    "attacks": {"dp_audit": {"enabled": True, "canaries": 500}},
}

# Each preset: "title", "description", "minutes" (wall time of one run on the reference
# machine, 2 quiet CPU cores: benchmarks/README.md, "Preset times"; the dashboard scales it by
# this machine's measured speed, engine.orchestration.timings) and "config".
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "minutes": 0.15,
        "title": "Quick check (3 hospitals, seconds)",
        "description": (
            "Tiny federation for checks: 3 centers, 32 px, 5 rounds (a few seconds on 2 CPUs)."
        ),
        "config": {
            "name": "smoke",
            "data": {"centers": 3, "patients_per_center": 2, "heldout_per_center": 1,
                     "slices_per_patient": 6, "image_size": 32},
            "model": {"channels": [8, 16, 32], "num_res_units": 1},
            "federation": {"rounds": 5, "local_epochs": 4, "batch_size": 6, "lr": 1e-2},
        },
    },
    "demo": {
        "minutes": 0.6,
        "title": "Demo federation (4 hospitals + an unseen one)",
        "description": (
            "4 hospitals + an unseen one learn MRI→CT at 64 px in about 40 s; visibly improves."
        ),
        "config": {
            "name": "demo",
            "data": {"centers": 4, "patients_per_center": 3, "heldout_per_center": 1,
                     "slices_per_patient": 12, "image_size": 64, "unseen_center": True,
                     "unseen_patients": 1},
            "model": {"channels": [16, 32, 64, 128], "num_res_units": 2},
            "federation": {"rounds": 15, "local_epochs": 3, "batch_size": 8, "lr": 3e-3},
        },
    },
    "paper": {
        "minutes": 1,
        "title": "The study's design, scaled to a CPU",
        "description": (
            "The study's design scaled to a CPU: 4 centers + an unseen 5th, FedProx "
            "(μ 0.01), L1 loss, Adam, U-Net with InstanceNorm, 96 px, 20 rounds."
        ),
        "config": {
            "name": "paper",
            "data": {"centers": 4, "patients_per_center": 4, "heldout_per_center": 2,
                     "slices_per_patient": 12, "image_size": 96, "unseen_center": True,
                     "unseen_patients": 3},
            "model": {"channels": [16, 32, 64, 128], "num_res_units": 2},
            "federation": {"rounds": 20, "local_epochs": 2, "batch_size": 8, "lr": 2e-3,
                           "aggregator": "fedprox", "fedprox_mu": 0.01,
                           "server_view_rounds": [1, 5, 10, 20]},
        },
    },
    "mia-paper": {
        "minutes": 2,
        "title": "Membership attack as in the study",
        "description": (
            "Membership inference as in the study, no defense: 4 centers with 2 training "
            "and 2 held-out patients each, 15 local epochs (local models fit their data), "
            "20 rounds, FedMIA on the last 10 (about 2 min). An illustration: 2 against 2 "
            "patients per hospital cannot show leakage at patient level; mia-evidence can."
        ),
        "config": _MIA_BASE,
    },
    "mia-secagg": {
        "minutes": 2,
        "title": "Membership attack with secure aggregation",
        "description": (
            "mia-paper with secure aggregation: the server only holds masked uploads; the "
            "released global model stays visible (about 2 min). An illustration, like "
            "mia-paper."
        ),
        "config": {**_MIA_BASE, "name": "mia-secagg",
                   "defenses": {"secure_aggregation": True}},
    },
    "mia-evidence": {
        "minutes": 0.45,
        "title": "Membership attack with enough patients for a verdict",
        "description": (
            "Membership inference with enough patients to support a verdict: 4 hospitals × "
            "(5 training + 10 held-out patients), the study's recipe at 48 px, 15 local "
            "epochs, 12 rounds, FedMIA on the last 6; the patient-level interval over all "
            "hospitals is about ±0.1 wide."
        ),
        "config": _MIA_EVIDENCE,
    },
    "dlg-paper": {
        "minutes": 20,
        "title": "The study's DLG attack",
        "description": (
            "The study's DLG: its U-Net (InstanceNorm, L1, Adam) at 64 px, every client "
            "uploads one step on one slice; L-BFGS gradient matching, 300 steps × 20 "
            "iterations, then the same attack on 3 calibration controls of the same "
            "difficulty (about 20 min)."
        ),
        "config": {**_STUDY_MODEL_B1, "name": "dlg-paper",
                   "attacks": {"inversion": {"enabled": True, "method": "dlg",
                                             "iterations": 300, "restarts": 1,
                                             "target_center": "all"}}},
    },
    "ig-strong": {
        "minutes": 6,
        "title": "Strongest inversion attack on the study's model",
        "description": (
            "The strongest inversion found against the study's model (as dlg-paper, B=1, "
            "no defense): Inverting Gradients with the attacker's anatomical prior, "
            "layer-wise cosine, 4 restarts (about 6 min)."
        ),
        "config": {**_STUDY_MODEL_B1, "name": "ig-strong",
                   "attacks": {"inversion": {**_INVERSION_EASY["attacks"]["inversion"],
                                             "iterations": 400, "restarts": 4}}},
    },
    "inversion-easy": {
        "minutes": 4,
        "title": "Inversion attack on a design known to leak",
        "description": (
            "A design that leaks: no normalisation, MSE loss, plain SGD, one slice per "
            "client (B=1), 32 px; the strongest attack rebuilds recognisable slices of "
            "round 1, then 3 calibration controls (about 4 min)."
        ),
        "config": _INVERSION_EASY,
    },
    "study-setup": {
        "minutes": 0.35,
        "title": "Live demo: the study's setup",
        "description": (
            "Live demo — the study's setup: 4 hospitals, L1, Adam, InstanceNorm U-Net at "
            "48 px, 12 rounds of 15 local epochs, then membership inference by the server "
            "(under a minute)."
        ),
        "config": _STUDY_DEMO,
    },
    "hardened": {
        "minutes": 0.4,
        "title": "Live demo: hardened (secure aggregation + clipped noise)",
        "description": (
            "Live demo — study-setup hardened with secure aggregation and each hospital's "
            "update clipped to norm 5 with Gaussian noise σ 0.001 (ε far above 10: noise "
            "without a meaningful privacy guarantee): the same attack on a masked server "
            "view (under a minute)."
        ),
        "config": {**_STUDY_DEMO, "name": "hardened", "defenses": HARDENED_DEFENSES},
    },
    "whatif": {
        "minutes": 4.5,
        "title": "What-if for one patient",
        "description": (
            "What-if for one patient: study-setup with data.whatif_patient among hospital "
            "data.whatif_center's training patients; membership inference plus a short "
            "reconstruction attempt (50 iterations) on that hospital's update (about 4.5 min;"
            " under secure aggregation the attempt inverts the round's aggregate of every "
            "hospital: about 11 min)."
        ),
        "config": _WHATIF,
    },
    "poisoned-hospital": {
        "minutes": 0.55,
        "title": "Live demo: a poisoned hospital",
        "description": (
            "Live demo — study-setup without attacks, but the first hospital (A) sends its "
            "model with strong noise (σ 0.3 per parameter) under plain averaging (under a "
            "minute)."
        ),
        "config": {**_STUDY_DEMO, "name": "poisoned-hospital",
                   "federation": {**_STUDY_DEMO["federation"], "server_view_rounds": "none"},
                   "attacks": _noisy_upload(0.3)},
    },
    "poison-base": {
        "minutes": 0.15,
        "title": "Clean federation for the poisoning studies",
        "description": (
            "The clean federation the poisoning presets and sweeps attack: 4 centers, 32 px, "
            "L1, Adam, 20 rounds (about 8 s)."
        ),
        "config": POISON_BASE,
    },
    **{f"hospitals-{n}": {
        "minutes": minutes,
        "title": f"{n} hospitals",
        "description": (
            f"The poisoning studies' clean federation with {n} hospitals, each its own scanner "
            f"profile (3 patients, 32 px, 20 rounds), trained as one batched computation "
            f"(about {words})."
        ),
        "config": _hospitals(n, f"hospitals-{n}"),
    } for n, minutes, words in ((8, 0.2, "12 s"), (16, 0.25, "15 s"), (64, 0.6, "36 s"))},
    "dp-frontier": {
        "minutes": 0.45,
        "title": "Server-side DP at ε 8 with 16 hospitals",
        "description": (
            "16 hospitals; the server clips every update to norm 4, averages them and adds the "
            "Gaussian noise that gives ε 8 (δ 1e-5) after 20 rounds (DP-FedAvg: the guarantee "
            "covers the released models, not the uploads the server receives). Membership "
            "inference on the last 6 rounds: FedMIA on the uploads and the attack on the "
            "released global models (about 27 s)."
        ),
        "config": {**_hospitals(16, "dp-frontier"),
                   "federation": {**POISON_BASE["federation"],
                                  "server_view_rounds": list(range(15, 21))},
                   "defenses": {"dp": {"enabled": True, "level": "server", "clip_norm": 4.0,
                                       "target_epsilon": 8.0}},
                   "attacks": {"membership": {"enabled": True, "rounds": "all",
                                              "balance": False}}},
    },
    "dp-frontier-patients": {
        "minutes": 2.2,
        "title": "Patient-level DP-SGD at ε 8 with many patients per hospital",
        "description": (
            "8 hospitals of 256 patients (2 slices each); each hospital trains with DP-SGD "
            "whose unit is one patient: every step samples each patient with probability ¼, "
            "clips each sampled patient's gradient to norm 1 and adds the Gaussian noise that "
            "gives ε 8 (δ 1e-5) after 20 rounds. Membership inference on the last 3 rounds "
            "(about 2 min)."
        ),
        "config": _DP_SGD_FRONTIER,
    },
    "poison-adaptive": {
        "minutes": 0.5,
        "title": "The strongest attacker against the median, 16 hospitals",
        "description": (
            "16 hospitals under FedMedian; 3 of them (A, B, C) collude with Min-Max: each "
            "round they see the honest updates and send the update farthest from their mean "
            "that stays as close to them as they are to each other. Held against the clean "
            "federation and the same attack against FedAvg (about 30 s)."
        ),
        "config": {**_hospitals(16, "poison-adaptive"),
                   "federation": {**POISON_BASE["federation"], "aggregator": "fedmedian"},
                   "attacks": {"poisoning": {"enabled": True, "kind": "min_max",
                                             "malicious_centers": [0, 1, 2]}}},
    },
    "poison-high": {
        "minutes": 0.85,
        "title": "Poisoning: strong noise on one upload",
        "description": (
            "One malicious center adds strong noise (σ 0.3 per parameter) to the model it "
            "uploads; plain averaging. The study's high-noise case; the verdict rests on 3 "
            "seeds (about 50 s)."
        ),
        "config": {**POISON_BASE, "name": "poison-high",
                   "attacks": _noisy_upload(0.3, seeds=3)},
    },
    "poison-low": {
        "minutes": 0.85,
        "title": "Poisoning: weak noise on one upload",
        "description": (
            "One malicious center adds weak noise (σ 0.03 per parameter) to its upload: "
            "small enough to hide among honest differences; the verdict rests on 3 seeds "
            "(about 50 s)."
        ),
        "config": {**POISON_BASE, "name": "poison-low",
                   "attacks": _noisy_upload(0.03, seeds=3)},
    },
    "backdoor-demo": {
        "minutes": 0.25,
        "title": "Backdoor: a hospital makes the synthetic CT lie under a trigger",
        "description": (
            "Hospital A trains on its slices plus copies carrying a 4 px bright square in the "
            "MRI's centre whose CT is 1000 HU higher around it, and boosts its update ×2 "
            "(model replacement); FedAvg. Scored on every held-out and unseen slice with and "
            "without the trigger, against the same federation without the attacker (about "
            "15 s; under another rule or update clipping also the same attack against FedAvg)."
        ),
        "config": BACKDOOR_DEMO,
    },
    "backdoor-clipped": {
        "minutes": 0.4,
        "title": "Backdoor against update clipping",
        "description": (
            "backdoor-demo with the server clipping every hospital's update to the round's "
            "median update norm; also trains the same attack against FedAvg, the control the "
            "defense is judged against (about 25 s)."
        ),
        "config": {**BACKDOOR_DEMO, "name": "backdoor-clipped",
                   "defenses": {"update_clip": "median"}},
    },
    "backdoor-flame": {
        "minutes": 0.4,
        "title": "Backdoor against FLAME",
        "description": (
            "backdoor-demo with FLAME instead of plain averaging: HDBSCAN on the updates' "
            "cosine distances admits the majority, each is clipped to the round's median "
            "norm, they are averaged and noise of 0.001 × that norm added; also trains the "
            "same attack against FedAvg, the control (about 25 s)."
        ),
        "config": {**BACKDOOR_DEMO, "name": "backdoor-flame", "defenses": {"flame": True}},
    },
    "dp-audit": {
        "minutes": 0.2,
        "title": "Privacy audit: does the noise give the ε the accountant claims?",
        "description": (
            "4 hospitals with hospital-level DP at ε 8 (δ 1e-5, Opacus's accountant); 500 canary "
            "hospitals, each present with probability ½, upload through the hospitals' own clip-"
            "and-noise code, and the one-run audit bounds ε from below at 95 % (about 10 s)."
        ),
        "config": _DP_AUDIT,
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_overrides(name: str) -> dict[str, Any]:
    """The config overrides of preset ``name`` (a fresh copy)."""
    if name not in PRESETS:
        raise ConfigError(unknown_name("preset", name, list(PRESETS)))
    return copy.deepcopy(PRESETS[name]["config"])


def build_config(preset: str | None = None, file: str | Path | None = None,
                 sets: list[str] | tuple[str, ...] = (),
                 overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults ← preset ← config file ← overrides ← ``--set`` expressions, then validate;
    :class:`~engine.core.config.ConfigError` names every bad key."""
    return config_from(preset_overrides(preset) if preset else None, file, sets, overrides)


def preset_description(name: str) -> str:
    return PRESETS[name]["description"]


def preset_title(name: str) -> str:
    """The preset's name in words, for pages (the id stays the public name)."""
    return PRESETS[name].get("title", name) if name in PRESETS else name
