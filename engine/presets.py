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
            "20 rounds, FedMIA on the last 10 (about 2 min)."
        ),
        "config": _MIA_BASE,
    },
    "mia-secagg": {
        "description": (
            "mia-paper with secure aggregation: the server only holds masked uploads; the "
            "released global model stays visible (about 2 min)."
        ),
        "config": {**_MIA_BASE, "name": "mia-secagg",
                   "defenses": {"secure_aggregation": True}},
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
