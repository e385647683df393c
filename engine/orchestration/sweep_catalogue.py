"""The catalogue of named sweeps: a base preset plus a list of cells, each a list of
``--set`` overrides. Names are a public interface (``fedsct sweep --preset NAME``); running
one is :mod:`engine.orchestration.sweeps`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.core.config import ConfigError
from engine.core.config.echo import unknown_name
from engine.orchestration.presets import HARDENED_DEFENSES

# Rules that run with 4 centers (Krum, Multi-Krum need > 2f+2 = 4 and Bulyan ≥ 4f+3 = 7
# centers against one attacker, so they are left out of the 4-center study).
POISON_AGGREGATORS: dict[str, list[str]] = {
    "fedavg": [],
    "fedprox": ["federation.aggregator=fedprox", "federation.fedprox_mu=0.01"],
    "fedmedian": ["federation.aggregator=fedmedian"],
    "trimmed_mean": ["federation.aggregator=trimmed_mean"],
}
# Low and high level of each noise kind: data noise in normalised units, update noise per
# parameter in absolute units.
POISON_LEVELS: dict[str, tuple[float, float]] = {"data_noise": (0.1, 1.0),
                                                 "update_noise": (0.03, 0.3)}
# Two attackers out of four are beyond what any robust rule here tolerates (the median needs
# an honest majority; a 25 % trim of 4 values equals the median): pairs are run with the
# averaging rules and the median, to show where robustness ends.
PAIR_AGGREGATORS = ("fedavg", "fedprox", "fedmedian")
# The privacy budgets of the DP studies (ε after the last round; no DP is ε = ∞).
DP_EPSILONS = (64.0, 16.0, 4.0, 1.0)


def _as_sets(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` → ``["a.b=1"]`` (the ``--set`` form of a nested override)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _as_sets(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def _poison_cells() -> list[list[str]]:
    cells = [list(a) for a in POISON_AGGREGATORS.values()]  # clean baselines first
    singles = [[c] for c in range(4)]
    pairs = [[a, b] for a in range(4) for b in range(a + 1, 4)]
    for kind, levels in POISON_LEVELS.items():
        for std in levels:
            for name, agg in POISON_AGGREGATORS.items():
                for bad in singles + (pairs if name in PAIR_AGGREGATORS else []):
                    cells.append([*agg, "attacks.poisoning.enabled=true",
                                  f"attacks.poisoning.kind={kind}",
                                  f"attacks.poisoning.malicious_centers={bad}",
                                  f"attacks.poisoning.noise_std={std}"])
    return cells


def _model_poison_cells() -> list[list[str]]:
    cells = [list(a) for a in POISON_AGGREGATORS.values()]
    for kind in ("sign_flip", "scaling", "alie"):
        for agg in POISON_AGGREGATORS.values():
            cells.append([*agg, "attacks.poisoning.enabled=true",
                          f"attacks.poisoning.kind={kind}"])
    return cells


def _data_noise_cells() -> list[list[str]]:
    cells = []
    for loss in ("l1", "mse"):
        for opt in ("adam", "sgd"):
            train = [f"federation.loss={loss}", f"federation.optimizer={opt}"]
            if opt == "sgd":
                train.append("federation.lr=0.1")
            cells.append(train)
            cells += [[*train, "attacks.poisoning.enabled=true",
                       "attacks.poisoning.kind=data_noise", f"attacks.poisoning.target={t}",
                       "attacks.poisoning.noise_std=1.0"] for t in ("mri", "ct", "both")]
    return cells


# The backdoor study's defenses: the server's rule or update clipping.
BACKDOOR_DEFENSES = {"FedAvg": [], "update clipping": ["defenses.update_clip=median"],
                     "FedMedian": ["federation.aggregator=fedmedian"],
                     "trimmed mean": ["federation.aggregator=trimmed_mean"],
                     "FLAME": ["defenses.flame=true"]}


def _backdoor_cells() -> list[list[str]]:
    """Attack (boosted or data only) × defense × one or two attackers of 4 × 3 seeds."""
    return [[f"attacks.backdoor.attack={attack}", f"attacks.backdoor.malicious_centers={bad}",
             *defense, f"seed={seed}"]
            for attack in ("model_replacement", "data")
            for defense in BACKDOOR_DEFENSES.values()
            for bad in ("[0]", "[0,1]")
            for seed in (0, 1, 2)]


# The defenses that need more than the rule: FLTrust's root set, and DP-FedAvg's noise with
# the clip near the honest updates' median norm (about 4 in backdoor-demo; weak DP).
SERVER_DEFENSES = {"FLTrust": ["defenses.fltrust=true"],
                   "server DP": ["defenses.dp.enabled=true", "defenses.dp.level=server",
                                 "defenses.dp.clip_norm=4", "defenses.dp.noise_multiplier=0.01"]}


def _backdoor_defense_cells() -> list[list[str]]:
    """One attacker of 4, 3 seeds: model replacement against FLTrust and server DP; the
    constrain-and-scale attacker against FedAvg, update clipping, FLAME, FLTrust and server
    DP; the texture and artefact triggers against FedAvg and FLAME."""
    flame_clip = {k: BACKDOOR_DEFENSES[k] for k in ("FedAvg", "update clipping", "FLAME")}
    plans = [*(["attacks.backdoor.attack=model_replacement", *d]
               for d in SERVER_DEFENSES.values()),
             *(["attacks.backdoor.attack=constrain_scale", *d]
               for d in [*flame_clip.values(), *SERVER_DEFENSES.values()]),
             *([f"attacks.backdoor.trigger={t}", *BACKDOOR_DEFENSES[d]]
               for t in ("texture", "artefact") for d in ("FedAvg", "FLAME"))]
    return [[*plan, f"seed={seed}"] for plan in plans for seed in (0, 1, 2)]


# The breakdown study: each rule (by its rule_key) with f attackers of 8 up to its limit
# (engine.core.config.robust.breakdown_limit: Krum n ≥ 2f+3, Bulyan n ≥ 4f+3, the median,
# centred clipping, DnC and NNM f < n/2, the trimmed mean f ≤ βn; FedAvg, the control, to 3),
# the fixed ALIE beside the six adaptive attackers; the server told f.
BREAKDOWN_RULES: dict[str, tuple[list[str], tuple[int, ...]]] = {
    "fedavg": (["federation.aggregator=fedavg"], (1, 2, 3)),
    "fedmedian": (["federation.aggregator=fedmedian"], (1, 2, 3)),
    "trimmed_mean": (["federation.aggregator=trimmed_mean", "federation.trim_beta=0.25"],
                     (1, 2)),
    "krum": (["federation.aggregator=krum"], (1, 2)),
    "bulyan": (["federation.aggregator=bulyan"], (1,)),
    "centered_clipping": (["federation.aggregator=centered_clipping"], (1, 2, 3)),
    "dnc": (["federation.aggregator=dnc"], (1, 2, 3)),
    "nnm+fedmedian": (["federation.aggregator=fedmedian", "federation.pre_aggregator=nnm"],
                      (1, 2, 3)),
}
BREAKDOWN_KINDS = ("alie", "alie_opt", "ipm_opt", "min_max", "min_sum", "fang_krum",
                   "fang_trim")
# With 16 hospitals: 3 and 6 attackers (up to Krum's limit, n ≥ 2f+3) against FedAvg (the
# control) and four of the robust rules, and the three attacks that were strongest at 8
# hospitals (in every cell but one).
BREAKDOWN_RULES_16 = {name: (BREAKDOWN_RULES[name][0], (3, 6)) for name in
                      ("fedavg", "fedmedian", "krum", "centered_clipping", "nnm+fedmedian")}
BREAKDOWN_KINDS_16 = ("alie_opt", "ipm_opt", "fang_krum")
# With 64 hospitals: 16 attackers (a quarter) against FedAvg, FedMedian, centred clipping and
# ARC before FedMedian, the same three attacks. Not Krum: with 64 uploads the attackers' search
# (about 65 Krum evaluations a round) makes one run about 23 min on a core.
BREAKDOWN_RULES_64 = {
    **{name: (BREAKDOWN_RULES[name][0], (16,)) for name in
       ("fedavg", "fedmedian", "centered_clipping")},
    "arc+fedmedian": (["federation.aggregator=fedmedian", "federation.pre_aggregator=arc"],
                      (16,)),
}


def _breakdown_cells(rules: dict[str, tuple[list[str], tuple[int, ...]]],
                     kinds: tuple[str, ...]) -> list[list[str]]:
    """Clean runs first (each rule and f, so that every attacked run reuses its baseline),
    then FedAvg under attack (the control every other rule reuses), then the other rules;
    ``rules``: each rule's settings and numbers of attackers; seeds 0–2 as cells."""
    def rule(name: str, f: int) -> list[str]:
        return [*rules[name][0], f"federation.num_malicious={f}"]

    pairs = [(name, f) for name, (_, fs) in rules.items() for f in fs]
    seeds = [f"seed={s}" for s in (0, 1, 2)]
    clean = [[*rule(name, f), seed] for name, f in pairs for seed in seeds]
    attacked = [[*rule(name, f), "attacks.poisoning.enabled=true",
                 f"attacks.poisoning.kind={kind}",
                 f"attacks.poisoning.malicious_centers=[{','.join(map(str, range(f)))}]", seed]
                for name, f in pairs for kind in kinds for seed in seeds]
    return clean + attacked


# The frontier's ε grid: the 16 … 1, and above it where utility may come back.
FRONTIER_EPSILONS = (1024.0, 256.0, 64.0, 16.0, 8.0, 4.0, 2.0, 1.0)


def _frontier_cells(server_dp: list[str]) -> list[list[str]]:
    """Without DP, then each ε of :data:`FRONTIER_EPSILONS`, seeds 0–2; ``server_dp``: the
    DP settings a base preset without them needs (and its sampling), on every cell."""
    off = [s for s in server_dp if s.startswith("federation.")]
    return [[*cell, f"seed={seed}"]
            for cell in ([*off, "defenses.dp.enabled=false"],
                         *([*server_dp, "defenses.dp.enabled=true",
                            f"defenses.dp.target_epsilon={e}"] for e in FRONTIER_EPSILONS))
            for seed in (0, 1, 2)]


# Patient-level DP-SGD's grid: the ε, no higher (each run costs about 2 min).
PATIENT_EPSILONS = (16.0, 8.0, 4.0, 2.0, 1.0)


# The privacy audit's ε grid; ∞ is DP's clip without noise.
AUDIT_EPSILONS = (None, 64.0, 8.0, 4.0, 1.0)


def _audit_cell(level: str, epsilon: float | None) -> list[str]:
    noise = (["defenses.dp.target_epsilon=null", "defenses.dp.noise_multiplier=0"]
             if epsilon is None else [f"defenses.dp.target_epsilon={epsilon}"])
    if level == "client":
        return ["defenses.dp.level=client", *noise]
    return ["defenses.dp.level=sample", "attacks.dp_audit.kind=patient", *noise]


SWEEPS: dict[str, dict[str, Any]] = {
    "mia-dp": {
        "minutes": 45,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "Differential privacy against membership inference: mia-paper without DP (ε = ∞), "
            "then hospital-level DP (updates clipped to norm 5) and patient-level DP-SGD "
            "(per-patient gradients clipped to norm 1) at ε 64, 16, 4 and 1 (δ 1e-5; only "
            "ε ≤ 10 is a meaningful guarantee); patient-level AUCs with intervals beside the "
            "model's MAE."
        ),
        "base": "mia-paper",
        "cells": [
            [],
            *[["defenses.dp.enabled=true", "defenses.dp.level=client",
               "defenses.dp.clip_norm=5.0", f"defenses.dp.target_epsilon={e}"]
              for e in DP_EPSILONS],
            *[["defenses.dp.enabled=true", "defenses.dp.level=sample",
               "defenses.dp.clip_norm=1.0", f"defenses.dp.target_epsilon={e}"]
              for e in DP_EPSILONS],
        ],
    },
    "dp-audit": {
        "minutes": 1,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The privacy audit at ε ∞ (clip, no noise), 64, 8, 4 and 1 for hospital-level DP "
            "(500 canary hospitals) and patient-level DP-SGD (500 canary patients in Hospital "
            "A): the audit's lower bound against the accountant's ε, beside the most 500 "
            "canaries can certify."
        ),
        "base": "dp-audit",
        "cells": [_audit_cell(level, e) for level in ("client", "sample")
                  for e in AUDIT_EPSILONS],
    },
    "inversion-factors": {
        "minutes": 45,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "Why a design leaks: inversion-easy, then one factor changed at a time — L1 loss, "
            "InstanceNorm, 4 slices per step, 4 local steps, a late round, 64 px, Adam (one "
            "step, attacked with and without reading Adam's step back; and 4 steps); "
            "reconstruction SSIM beside the mean-image floor, calibrated verdicts."
        ),
        "base": "inversion-easy",
        "cells": [
            [],
            ["federation.loss=l1"],
            ["model.norm=instance"],
            ["data.slices_per_patient=4", "federation.batch_size=4"],
            ["federation.local_epochs=4"],
            ["federation.server_view_rounds=[30]", "attacks.inversion.target_round=last"],
            ["data.image_size=64"],
            ["federation.optimizer=adam", "federation.lr=0.002"],
            ["federation.optimizer=adam", "federation.lr=0.002",
             "attacks.inversion.adam=simulate"],
            ["federation.optimizer=adam", "federation.lr=0.002", "federation.local_epochs=4"],
        ],
    },
    "inversion-budget": {
        "minutes": 45,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "How much attack is enough: ig-strong on the first hospital (A) with 400, 2,000 "
            "and 8,000 iterations, and at 2,000 iterations with total-variation weights "
            "0.001, 0.01 and 0.1; matching loss, body SSIM and the calibration control at "
            "each budget."
        ),
        "base": "ig-strong",
        "cells": [
            *[["attacks.inversion.target_center=0", f"attacks.inversion.iterations={n}"]
              for n in (400, 2000, 8000)],
            *[["attacks.inversion.target_center=0", "attacks.inversion.iterations=2000",
               f"attacks.inversion.tv_weight={w}"] for w in (0.001, 0.01, 0.1)],
        ],
    },
    "inversion-defenses": {
        "minutes": 16,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "Defenses against the inversion-easy leak: secure aggregation over 3 centers, "
            "hospital-level DP (ε 64 and 4), update pruning, 4 slices per step; "
            "reconstruction SSIM and the cost in sCT MAE (about 15 min)."
        ),
        "base": "inversion-easy",
        "cells": [
            [],
            ["defenses.secure_aggregation=true"],
            *[["defenses.dp.enabled=true", "defenses.dp.clip_norm=0.05",
               f"defenses.dp.target_epsilon={e}"] for e in (64.0, 4.0)],
            *[[f"defenses.prune_fraction={f}"] for f in (0.9, 0.99)],
            ["data.slices_per_patient=4", "federation.batch_size=4"],
        ],
    },
    "whatif": {
        "minutes": 16,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "One patient with and without defenses: the whatif preset as is, then hardened "
            "with secure aggregation and clipped noise (clip 5, σ 0.001; ε far above 10, no "
            "meaningful DP guarantee), where the reconstruction attempt inverts the round's "
            "aggregate of every hospital. Give the patient "
            "with --set data.whatif_patient=FOLDER (about 16 min)."
        ),
        "base": "whatif",
        "cells": [[], _as_sets({"defenses": HARDENED_DEFENSES})],
        "requires": ["data.whatif_patient"],
    },
    "poison-paper": {
        "minutes": 13,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The study's poisoning grid on poison-base: every single malicious center (and "
            "every pair for FedAvg, FedProx, FedMedian) × noise on data or on the upload × a "
            "low and a high level × FedAvg, FedProx, FedMedian, trimmed mean; clean baselines "
            "first (about 13 min)."
        ),
        "base": "poison-base",
        "cells": _poison_cells(),
    },
    "poison-model": {
        "minutes": 2,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "Model poisoning beyond the study, 4 centers and 1 attacker: sign flip, scaling "
            "(model replacement) and A Little Is Enough against each rule (about 2 min)."
        ),
        "base": "poison-base",
        "cells": _model_poison_cells(),
    },
    "poison-data-factors": {
        "minutes": 2,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "Which data noise hurts: strong noise (σ 1) on the MRI, the CT or both, with an "
            "L1 or MSE loss and Adam or SGD local training; FedAvg (about 2 min)."
        ),
        "base": "poison-base",
        "cells": _data_noise_cells(),
    },
    "backdoor-paper": {
        "minutes": 20,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The sCT backdoor beyond the study: model replacement (boost ×2) or backdoored "
            "data only, against FedAvg, update clipping, FedMedian, the trimmed mean and FLAME, "
            "with "
            "one or two attackers of 4 hospitals, 3 seeds; each run against the same "
            "federation without the attacker and, when defended, the attack against FedAvg "
            "(about 20 min)."
        ),
        "base": "backdoor-demo",
        "cells": _backdoor_cells(),
    },
    "poison-breakdown": {
        "minutes": 59,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The strongest attacker against each rule as the attackers grow: 8 hospitals; "
            "FedAvg, FedMedian, the trimmed mean (β 0.25), Krum, Bulyan, centred clipping, DnC "
            "and NNM before FedMedian with 1 attacker up to each rule's limit (Krum n ≥ 2f+3, "
            "Bulyan n ≥ 4f+3, the others f < n/2 or f ≤ βn), the server told f; ALIE (z 1) "
            "and the adaptive attackers that see the round's honest updates (ALIE and IPM "
            "with their factor tuned to the rule, Min-Max, Min-Sum, Fang's attacks on Krum "
            "and on the trimmed mean); seeds 0–2, each against its clean federation (about "
            "59 min)."
        ),
        "base": "hospitals-8",
        "cells": _breakdown_cells(BREAKDOWN_RULES, BREAKDOWN_KINDS),
    },
    "poison-breakdown-16": {
        "minutes": 22,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The strongest attacker with 16 hospitals: FedAvg, FedMedian, Krum, centred "
            "clipping and NNM before FedMedian with 3 and 6 attackers (the server told f), "
            "against ALIE and IPM tuned to the rule and Fang's attack on Krum; seeds 0–2, "
            "each against its clean federation (about 22 min)."
        ),
        "base": "hospitals-16",
        "cells": _breakdown_cells(BREAKDOWN_RULES_16, BREAKDOWN_KINDS_16),
    },
    "poison-breakdown-64": {
        "minutes": 60,  # estimated on 2 CPU cores (one worker), benchmarks/README.md
        "description": (
            "The strongest attacker with 64 hospitals: FedAvg, FedMedian, centred clipping and "
            "ARC before FedMedian with 16 attackers (the server told f), against ALIE and IPM "
            "tuned to the rule and Fang's attack on Krum; seeds 0–2, each against its clean "
            "federation (about 60 min; about 32 with --workers 2)."
        ),
        "base": "hospitals-64",
        "cells": _breakdown_cells(BREAKDOWN_RULES_64, BREAKDOWN_KINDS_16),
    },
    "dp-frontier": {
        "minutes": 10,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The privacy–utility frontier with 16 hospitals: server-side DP (DP-FedAvg, clip "
            "4, every hospital every round) at ε 1024, 256, 64, 16, 8, 4, 2 and 1 (δ 1e-5) "
            "and without DP, seeds 0–2; the model's error beside the membership attacks' "
            "patient-level AUC (about 10 min)."
        ),
        "base": "dp-frontier",
        "cells": _frontier_cells([]),
    },
    "dp-frontier-64": {
        "minutes": 7,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The same frontier with 64 hospitals, a quarter of them sampled each round (the "
            "accountant counts the sampling): server-side DP at ε 1024 … 1 and without DP, "
            "seeds 0–2; the model's error only (the membership attacks need every hospital "
            "in every round) (about 7 min)."
        ),
        "base": "hospitals-64",
        "cells": _frontier_cells(["federation.sample_rate=0.25", "defenses.dp.level=server",
                                  "defenses.dp.clip_norm=4"]),
    },
    "dp-frontier-patients": {
        "minutes": 42,  # wall time on 2 CPU cores (one worker), benchmarks/README.md
        "description": (
            "The frontier of patient-level DP-SGD: 8 hospitals of 256 patients, each patient's "
            "gradient clipped to norm 1, a quarter of the patients sampled each step; without "
            "DP, DP-SGD without noise (ε ∞: the cost of clipping and sampling alone) and at ε "
            "16, 8, 4, 2 and 1 (δ 1e-5), seeds 0–2; the model's error beside the membership "
            "attacks' patient-level AUC (about 42 min; 23 with --workers 2)."
        ),
        "base": "dp-frontier-patients",
        # The level is the base's; it is named so that each label says what it runs.
        "cells": [[*cell, f"seed={seed}"]
                  for cell in (["defenses.dp.enabled=false"],
                               ["defenses.dp.level=sample", "defenses.dp.target_epsilon=null",
                                "defenses.dp.noise_multiplier=0"],
                               *(["defenses.dp.level=sample", f"defenses.dp.target_epsilon={e}"]
                                 for e in PATIENT_EPSILONS))
                  for seed in (0, 1, 2)],
    },
    "backdoor-defenses": {
        "minutes": 12,  # wall time on 2 CPU cores, benchmarks/README.md
        "description": (
            "The backdoor against the defenses that need more than a rule, and attackers that "
            "hide: model replacement against FLTrust (a 2-patient root set) and server-side DP"
            " (clip 4, σ 0.01: weak DP, its ε reported); the constrain-and-scale attacker "
            "against FedAvg, update clipping, FLAME, FLTrust and server-side DP; a texture and "
            "a scanner-artefact trigger against FedAvg and FLAME; one attacker of 4, 3 seeds "
            "(about 12 min)."
        ),
        "base": "backdoor-demo",
        "cells": _backdoor_defense_cells(),
    },
}


def sweep_spec(name: str) -> dict[str, Any]:
    """Sweep ``name``'s catalogue entry: ``base`` preset, ``cells`` (``--set`` lists),
    ``description``, ``minutes`` (measured wall time) and optional ``requires``."""
    if name not in SWEEPS:
        raise ConfigError(unknown_name("sweep preset", name, list(SWEEPS)))
    return SWEEPS[name]


def sweep_cells(name: str, sets: list[str] | tuple = ()) -> list[Cell]:
    """Sweep ``name``'s experiments, each with ``sets`` applied after its own overrides."""
    spec = sweep_spec(name)
    return [Cell(spec["base"], list(own), [*own, *sets]) for own in spec["cells"]]


def cell_label(sets: list[str]) -> str:
    """``["defenses.dp.clip_norm=5.0"]`` → ``"clip_norm=5.0"``; no overrides → ``"baseline"``."""
    return ", ".join(key.rsplit(".", 1)[-1] + "=" + value
                     for key, value in (s.split("=", 1) for s in sets)) or "baseline"


@dataclass(frozen=True)
class Cell:
    """One experiment of a sweep or study: a preset, the overrides that make the cell (its
    label), and every override applied (with the sweep's or the scale's own)."""

    preset: str
    own: list[str]
    sets: list[str]

    @property
    def label(self) -> str:
        return cell_label(self.own)
