"""The whole study's cells at each scale (``fedsct study --scale demo|paper|full``): which
preset and overrides each part of the study runs; running it is
:mod:`engine.orchestration.study`.
"""

from __future__ import annotations

from engine.core.config import ConfigError
from engine.orchestration.sweep_catalogue import SWEEPS, Cell

STUDY_SCALES = ("demo", "paper", "full")
# Wall time from empty on 2 CPU cores (benchmarks/README.md): demo measured as a whole; paper
# the sum of its parts' measured times; full is meant for a GPU and was not measured on a CPU.
STUDY_MINUTES = {"demo": 14, "paper": 176, "full": 600}

# Each part of the study: its key (the report's row), the preset it runs.
PARTS: dict[str, str] = {
    "quality": "paper",
    "membership": "mia-paper",
    "membership-secagg": "mia-secagg",
    "membership-evidence": "mia-evidence",
    "dlg": "dlg-paper",
    "strongest-inversion": "ig-strong",
    "poisoning": "poison-base",
    "breakdown": "hospitals-8",
    "backdoor": "backdoor-demo",
    "frontier": "dp-frontier",
    "frontier-patients": "dp-frontier-patients",
}

# Overrides per scale and part (every cell of the part gets them).
_DEMO: dict[str, list[str]] = {
    "quality": ["federation.rounds=8", "data.image_size=64",
                "federation.server_view_rounds=[8]"],
    "membership": ["federation.rounds=10", "federation.server_view_rounds=[6,7,8,9,10]"],
    "membership-secagg": ["federation.rounds=10",
                          "federation.server_view_rounds=[6,7,8,9,10]"],
    "membership-evidence": [],
    "dlg": ["attacks.inversion.iterations=30"],
    "strongest-inversion": ["attacks.inversion.iterations=100", "attacks.inversion.restarts=2"],
    "poisoning": ["federation.rounds=8"],
    "breakdown": [],
    "backdoor": [],
    "frontier": [],
    # A quarter of the patients, and of the batch: the same q (a quarter of them each step).
    "frontier-patients": ["data.patients_per_center=64", "federation.batch_size=32"],
}
# Parts that run a sweep's cells, at the sweep's own size at every scale (the backdoor's
# trigger is sized for 32 px images; the many-hospitals parts are about the count, not the
# image): the whole sweep, or at the demo scale a few of its cells, one seed. Beyond the
# published study: the strongest attacker per rule, the backdoor, DP with many hospitals and
# with many patients per hospital.
SWEPT = {"poisoning": "poison-paper", "breakdown": "poison-breakdown",
         "backdoor": "backdoor-paper", "frontier": "dp-frontier",
         "frontier-patients": "dp-frontier-patients"}
_ATTACK = ["attacks.poisoning.enabled=true", "attacks.poisoning.malicious_centers=[0]"]
_DEMO_CELLS = {
    "breakdown": [[f"federation.aggregator={rule}", "federation.num_malicious=1", *attack,
                   "seed=0"]
                  for rule in ("fedavg", "fedmedian")
                  for attack in ([], [*_ATTACK, "attacks.poisoning.kind=alie_opt"],
                                 [*_ATTACK, "attacks.poisoning.kind=min_max"])],
    "backdoor": [["attacks.backdoor.attack=model_replacement",
                  "attacks.backdoor.malicious_centers=[0]", *defense, "seed=0"]
                 for defense in ([], ["defenses.update_clip=median"],
                                 ["defenses.flame=true"])],
    "frontier": [["defenses.dp.enabled=false", "seed=0"],
                 ["defenses.dp.enabled=true", "defenses.dp.target_epsilon=8.0", "seed=0"]],
    "frontier-patients": [["defenses.dp.enabled=false", "seed=0"],
                          ["defenses.dp.level=sample", "defenses.dp.target_epsilon=8.0",
                           "seed=0"]],
}
_FULL_DATA = ["data.image_size=256", "data.patients_per_center=20",
              "data.heldout_per_center=5", "data.slices_per_patient=32"]
_FULL: dict[str, list[str]] = {
    "quality": [*_FULL_DATA, "data.unseen_patients=5", "federation.rounds=50"],
    "membership": [*_FULL_DATA[:1], "data.slices_per_patient=32"],
    "membership-secagg": [*_FULL_DATA[:1], "data.slices_per_patient=32"],
    "membership-evidence": ["data.image_size=256", "data.heldout_per_center=20"],
    "dlg": ["data.image_size=256"],
    "strongest-inversion": ["data.image_size=256"],
    "poisoning": ["data.image_size=256", "data.slices_per_patient=32"],
    "breakdown": [],
    "backdoor": [],
    "frontier": [],
    "frontier-patients": [],
}
SCALE_SETS: dict[str, dict[str, list[str]]] = {
    "demo": _DEMO, "paper": {part: [] for part in PARTS}, "full": _FULL}
# The quality part is also measured as the challenge does (whole volumes, native grid).
QUALITY_SETS = ["evaluation.volumetric=true"]


def study_cells(scale: str) -> list[tuple[str, Cell]]:
    """Every experiment of the study at ``scale`` with the part it belongs to, in the order
    they run."""
    if scale not in STUDY_SCALES:
        raise ConfigError(f"unknown study scale {scale!r}; choose one of {', '.join(STUDY_SCALES)}")
    extra = SCALE_SETS[scale]
    cells = []
    for part, preset in PARTS.items():
        if part in SWEPT:
            owns = (SWEEPS[SWEPT[part]]["cells"] if scale != "demo" or part not in _DEMO_CELLS
                    else _DEMO_CELLS[part])
            cells += [(part, Cell(preset, [*own], [*own, *extra[part]])) for own in owns]
        else:
            own = [f"name={preset}"]
            sets = [*own, *extra[part], *(QUALITY_SETS if part == "quality" else [])]
            cells.append((part, Cell(preset, own, sets)))
    return cells
