"""Named experiment presets. Names are a public interface (`fedsct run --preset NAME`)."""

from __future__ import annotations

from typing import Any

from engine.config import ConfigError

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
# small budget (the page says so); the page sets data.whatif_patient and the target center.
_WHATIF: dict[str, Any] = {
    **_STUDY_DEMO, "name": "whatif",
    "attacks": {"membership": _STUDY_DEMO["attacks"]["membership"],
                "inversion": {"enabled": True, "method": "ig", "iterations": 50,
                              "restarts": 1, "target_round": "first", "target_center": 0,
                              "snapshot_every": 0}},
}
# What the What-if page compares against: the hardened demo's defenses.
HARDENED_DEFENSES: dict[str, Any] = {"secure_aggregation": True,
                                     "dp": {"enabled": True, "clip_norm": 5.0,
                                            "noise_multiplier": 0.001}}


def _noisy_upload(noise_std: float) -> dict[str, Any]:
    """``attacks`` overrides: center 0 adds N(0, noise_std²) to every uploaded parameter."""
    return {"poisoning": {"enabled": True, "kind": "update_noise", "malicious_centers": [0],
                          "noise_std": noise_std}}


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
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
        "description": (
            "Membership inference as in the study, no defense: 4 centers with 2 training "
            "and 2 held-out patients each, 15 local epochs (local models fit their data), "
            "20 rounds, FedMIA on the last 10 (about 2 min). An illustration: 2 against 2 "
            "patients per hospital cannot show leakage at patient level; mia-evidence can."
        ),
        "config": _MIA_BASE,
    },
    "mia-secagg": {
        "description": (
            "mia-paper with secure aggregation: the server only holds masked uploads; the "
            "released global model stays visible (about 2 min). An illustration, like "
            "mia-paper."
        ),
        "config": {**_MIA_BASE, "name": "mia-secagg",
                   "defenses": {"secure_aggregation": True}},
    },
    "mia-evidence": {
        "description": (
            "Membership inference with enough patients to support a verdict: 4 hospitals × "
            "(5 training + 10 held-out patients), the study's recipe at 48 px, 15 local "
            "epochs, 12 rounds, FedMIA on the last 6; the patient-level interval over all "
            "hospitals is about ±0.1 wide."
        ),
        "config": _MIA_EVIDENCE,
    },
    "dlg-paper": {
        "description": (
            "The study's DLG: its U-Net (InstanceNorm, L1, Adam) at 64 px, every client "
            "uploads one step on one slice; L-BFGS gradient matching, 300 iterations "
            "(about 3 min)."
        ),
        "config": {**_STUDY_MODEL_B1, "name": "dlg-paper",
                   "attacks": {"inversion": {"enabled": True, "method": "dlg",
                                             "iterations": 300, "restarts": 1,
                                             "target_center": "all"}}},
    },
    "ig-strong": {
        "description": (
            "The strongest inversion found against the study's model (as dlg-paper, B=1, "
            "no defense): Inverting Gradients with the attacker's anatomical prior, "
            "layer-wise cosine, 4 restarts (about 4 min)."
        ),
        "config": {**_STUDY_MODEL_B1, "name": "ig-strong",
                   "attacks": {"inversion": {**_INVERSION_EASY["attacks"]["inversion"],
                                             "iterations": 400, "restarts": 4}}},
    },
    "inversion-easy": {
        "description": (
            "A design that leaks: no normalisation, MSE loss, plain SGD, one slice per "
            "client (B=1), 32 px; the strongest attack rebuilds recognisable slices of "
            "round 1 (about 2 min)."
        ),
        "config": _INVERSION_EASY,
    },
    "study-setup": {
        "description": (
            "Live demo — the study's setup: 4 hospitals, L1, Adam, InstanceNorm U-Net at "
            "48 px, 12 rounds of 15 local epochs, then membership inference by the server "
            "(under a minute)."
        ),
        "config": _STUDY_DEMO,
    },
    "hardened": {
        "description": (
            "Live demo — study-setup hardened with secure aggregation and client-level DP "
            "(clip 5, σ 0.001): the same attack on a masked server view (under a minute)."
        ),
        "config": {**_STUDY_DEMO, "name": "hardened", "defenses": HARDENED_DEFENSES},
    },
    "whatif": {
        "description": (
            "What-if for one patient: study-setup with data.whatif_patient among hospital "
            "data.whatif_center's training patients; membership inference plus a short "
            "reconstruction attempt (50 iterations) on that hospital's update (about 2.5 min)."
        ),
        "config": _WHATIF,
    },
    "poisoned-hospital": {
        "description": (
            "Live demo — study-setup without attacks, but hospital 0 sends its model with "
            "strong noise (σ 0.3 per parameter) under plain averaging (under a minute)."
        ),
        "config": {**_STUDY_DEMO, "name": "poisoned-hospital",
                   "federation": {**_STUDY_DEMO["federation"], "server_view_rounds": "none"},
                   "attacks": _noisy_upload(0.3)},
    },
    "poison-base": {
        "description": (
            "The clean federation the poisoning presets and sweeps attack: 4 centers, 32 px, "
            "L1, Adam, 20 rounds (about 8 s)."
        ),
        "config": POISON_BASE,
    },
    "poison-high": {
        "description": (
            "One malicious center adds strong noise (σ 0.3 per parameter) to the model it "
            "uploads; plain averaging. The study's high-noise case (about 15 s)."
        ),
        "config": {**POISON_BASE, "name": "poison-high",
                   "attacks": _noisy_upload(0.3)},
    },
    "poison-low": {
        "description": (
            "One malicious center adds weak noise (σ 0.03 per parameter) to its upload: "
            "small enough to hide among honest differences (about 15 s)."
        ),
        "config": {**POISON_BASE, "name": "poison-low",
                   "attacks": _noisy_upload(0.03)},
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_overrides(name: str) -> dict[str, Any]:
    """The config overrides of preset ``name`` (a fresh copy)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    import copy

    return copy.deepcopy(PRESETS[name]["config"])


def preset_description(name: str) -> str:
    return PRESETS[name]["description"]
