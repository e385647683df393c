"""``summary.json`` as types: the contract between the engine and everything that reads runs.

The engine writes the summary as a JSON object whose keys are documented in the README;
:func:`read_summary` reads it back as a :class:`RunSummary`, so the dashboard, the report and
the sweeps read typed fields (``summary.federation.dp.epsilon``) instead of nested ``.get``
chains. Every field has a default, so the summary of an older run still reads (what it
lacks is ``None`` or empty); a file that is not such an object is a :class:`SummaryError`.
Unknown keys are kept (``extra="allow"``): a newer engine's summary reads too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.core.config.robust import rule_key

Interval = tuple[float, float]


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow")


class Metrics(_Block):
    """sCT quality: MAE (HU, lower is better), PSNR (dB), SSIM (0–1)."""

    mae_hu: float
    psnr_db: float
    ssim: float


class HistoryPoint(Metrics):
    round: int
    # A backdoor run's mean shift of the target region under the trigger (HU), this round.
    backdoor_hu: float | None = None


class VolumetricGroup(Metrics):
    """Volumetric sCT quality of a group of patients (each scored on its native grid as
    SynthRAD2023 does, 3-D SSIM): the mean over its ``n`` patients and each patient's."""

    n: int = 0
    patients: dict[str, Metrics] = Field(default_factory=dict)


class VolumetricSummary(VolumetricGroup):
    """``federation.final_volumetric``: all hospitals' held-out patients pooled, and per
    hospital."""

    per_center: dict[str, VolumetricGroup] = Field(default_factory=dict)


class DPCenter(_Block):
    noise_multiplier: float = 0.0
    sample_rate: float = 1.0
    steps: int = 0
    epsilon: float | None = None


class DPSummary(_Block):
    """``federation.dp``; ``epsilon`` is None for ∞ (no noise) and for older runs."""

    enabled: bool = False
    level: str = "client"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    target_epsilon: float | None = None
    epsilon: float | None = None
    delta: float | None = None
    neighbouring: str | None = None
    meaningful: bool = False
    # ε for replacing one hospital's contribution by another's (hospital level only; None:
    # sample level, no noise, or an older run) and that neighbouring relation in words.
    epsilon_substitution: float | None = None
    substitution: str | None = None
    per_center: dict[str, DPCenter] = Field(default_factory=dict)

    @property
    def accounted(self) -> bool:
        """Whether an accountant gave ε (runs before it report σ only)."""
        return self.neighbouring is not None


class FederationSummary(_Block):
    rounds: int = 0
    aggregator: str = "fedavg"
    secure_aggregation: bool = False
    dp: DPSummary = Field(default_factory=DPSummary)
    prune_fraction: float = 0.0
    history: list[HistoryPoint] = Field(default_factory=list)
    final: Metrics | None = None
    per_center: dict[str, Metrics] = Field(default_factory=dict)
    unseen_center: Metrics | None = None
    local_steps: int = 0
    final_volumetric: VolumetricSummary | None = None
    unseen_center_volumetric: VolumetricGroup | None = None


class PatientCount(_Block):
    members: int = 0
    nonmembers: int = 0


class PooledPatient(_Block):
    auc: float | None = None
    auc_ci: Interval | None = None
    auc_ci_family: Interval | None = None
    p_value: float | None = None
    n: PatientCount = Field(default_factory=PatientCount)


class PatientFigures(_Block):
    """Patient-level figures of one attack (per center, and pooled over centers)."""

    auc: dict[str, float] = Field(default_factory=dict)
    auc_ci: dict[str, Interval] = Field(default_factory=dict)
    auc_ci_family: dict[str, Interval] = Field(default_factory=dict)
    p_value: dict[str, float] = Field(default_factory=dict)
    n: dict[str, PatientCount] = Field(default_factory=dict)
    pooled: PooledPatient = Field(default_factory=PooledPatient)


class MiaVariant(_Block):
    auc: dict[str, float] = Field(default_factory=dict)
    pooled_auc: float | None = None
    patient: PatientFigures = Field(default_factory=PatientFigures)
    degenerate: dict[str, bool] = Field(default_factory=dict)


class MiaPooled(_Block):
    auc: float | None = None
    auc_ci: Interval | None = None
    tpr_at_fpr: dict[str, float | None] = Field(default_factory=dict)


class CandidateCount(_Block):
    members: int = 0
    nonmembers: int = 0
    member_patients: int | None = None
    nonmember_patients: int | None = None


class MiaSummary(_Block):
    """``mia``: the headline attack's figures, the patient-level verdict and every attack."""

    attack: str = ""
    level: str = "slice"
    rounds: list[int] = Field(default_factory=list)
    auc: dict[str, float] = Field(default_factory=dict)
    auc_ci: dict[str, Interval] = Field(default_factory=dict)
    tpr_at_fpr: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    tpr_min_nonmembers: dict[str, int] = Field(default_factory=dict)
    degenerate: dict[str, bool] = Field(default_factory=dict)
    pooled: MiaPooled = Field(default_factory=MiaPooled)
    patient: PatientFigures | None = None
    family: int | None = None
    individual_uploads: bool = True
    verdict: dict[str, str] | None = None
    verdict_attack: str | None = None
    verdicts: dict[str, dict[str, str]] = Field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)
    variants: dict[str, MiaVariant] = Field(default_factory=dict)
    n_candidates: dict[str, CandidateCount] = Field(default_factory=dict)

    def figures(self, attack: str) -> PatientFigures:
        """The patient-level figures of ``attack`` (empty when the run has none)."""
        if attack == self.attack and self.patient is not None:
            return self.patient
        variant = self.variants.get(attack)
        return variant.patient if variant else PatientFigures()


class InversionClient(_Block):
    ssim: float
    ssim_body: float
    psnr_db: float
    floor_ssim_body: float
    floor_ssim: float | None = None
    ssim_ct: float | None = None
    psnr_db_ct: float | None = None
    ssim_coarse: float | None = None
    ssim_ct_body: float | None = None
    floor_ssim_ct: float | None = None
    n: int = 0
    round: int = 0
    seconds: float | None = None
    final_loss: float | None = None
    evaluations: int | None = None
    objective: str | None = None
    readable_fraction: float | None = None
    # The leak test (reconstruction_metrics.leak_test); None in runs made before it.
    gain: float | None = None
    threshold: float | None = None
    leak: bool | None = None
    null_ssim_body: float | None = None
    null_upper: float | None = None
    p_value: float | None = None
    reference_patients: int | None = None


class ControlTrial(_Block):
    seed: int
    recovered: bool
    gain: float
    threshold: float
    ssim_body: float
    null_ssim_body: float
    floor_ssim_body: float


class Calibration(_Block):
    """The same attack at the same budget on controls at the target's difficulty (older
    runs: one fixed easy control, without ``total``/``rate``/``trials``)."""

    ssim_body: float
    floor_ssim_body: float
    gain: float
    recovered: bool
    design: str = ""
    image_size: int = 0
    iterations: int = 0
    restarts: int = 0
    total: int = 1
    rate: float | None = None
    rate_ci: list[float] | None = None
    trials: list[ControlTrial] = Field(default_factory=list)
    slices: int = 1


class NullSummary(_Block):
    """The leak test's null: the random draws at most (with few ways to choose the patients
    every way is scored instead), the upper quantile used, the margin, the fewest reference
    patients any hospital's null rested on, and the gain its upper quantile gives (quantile
    − mean, the largest over hospitals)."""

    draws: int
    quantile: float
    margin: float
    reference_patients: int
    gain: float


class InversionSummary(_Block):
    method: str = "ig"
    ssim: float = 0.0
    ssim_body: float = 0.0
    psnr_db: float = 0.0
    ssim_ct: float | None = None
    psnr_db_ct: float | None = None
    ssim_coarse: float | None = None
    floor_ssim: float | None = None
    floor_ssim_body: float = 0.0
    null_ssim_body: float | None = None
    per_client: dict[str, InversionClient] = Field(default_factory=dict)
    iterations: int = 0
    restarts: int = 0
    inner_iterations: int | None = None
    evaluations: int | None = None
    verdict: str | None = None  # leak | no_leak | inconclusive (None: older run)
    calibration: Calibration | None = None
    leak_margin: float | None = None
    null: NullSummary | None = None
    # uploads: each hospital's upload was inverted; aggregate: every upload was masked
    # (secure aggregation) and the round's aggregate was inverted instead.
    observed: str = "uploads"


class PoisonCell(_Block):
    malicious: list[int] = Field(default_factory=list)
    kind: str = ""
    noise_std: float = 0.0
    aggregator: str = "fedavg"
    mae_hu: float = 0.0
    psnr_db: float = 0.0
    ssim: float = 0.0
    mae_ratio: float = 1.0


class PoisonSeed(_Block):
    seed: int
    mae_hu: float
    baseline_mae_hu: float
    mae_ratio: float


class FedAvgControl(_Block):
    """The same attack against FedAvg, per seed (``self``: the run is FedAvg)."""

    aggregator: str = "fedavg"
    self_: bool = Field(False, alias="self")
    seeds: list[PoisonSeed] = Field(default_factory=list)
    mae_ratio_mean: float = 0.0
    ratio_ci: list[float] | None = None
    hurt: bool = False


class Detection(_Block):
    per_round: list[dict[str, Any]] = Field(default_factory=list)
    flag_rate: dict[str, float] = Field(default_factory=dict)
    mean_distance_ratio: dict[str, float] = Field(default_factory=dict)
    detected: list[str] = Field(default_factory=list)
    flag_ratio: float = 2.0


class PoisoningSummary(_Block):
    kind: str = ""
    malicious: list[int] = Field(default_factory=list)
    malicious_names: list[str] = Field(default_factory=list)
    noise_std: float = 0.0
    target: str = "both"
    fraction: float = 1.0
    scale: float = 4.0
    z: float = 1.0
    baseline: dict[str, Metrics] = Field(default_factory=dict)
    baseline_history: list[HistoryPoint] = Field(default_factory=list)
    baseline_run: str | None = None
    cells: list[PoisonCell] = Field(default_factory=list)
    detection: Detection = Field(default_factory=Detection)
    # The verdict over seeds with the FedAvg control (None in runs made before it).
    verdict: str | None = None  # protected | damaged | broken | attack_too_weak
    seeds: list[PoisonSeed] = Field(default_factory=list)
    mae_ratio_mean: float | None = None
    ratio_ci: list[float] | None = None
    fedavg_control: FedAvgControl | None = None


class BackdoorCenter(_Block):
    """A backdoor's effect on one hospital's held-out slices (HU, share 0–1)."""

    success_hu: float | None = None
    success_rate: float | None = None
    slices: int = 0
    patients: int = 0


class BackdoorEffect(_Block):
    """A backdoor's effect on a final model's triggered held-out slices (HU, shares 0–1)."""

    success_hu: float | None = None
    success_rate: float | None = None
    slices: int = 0
    patients: int = 0
    patients_backdoored: int = 0
    patient_rate: float | None = None
    patient_rate_ci: list[float] | None = None
    per_center: dict[str, BackdoorCenter] = Field(default_factory=dict)
    # "<hospital>/<patient>" → backdoored (its mean shift past the threshold).
    patient_hits: dict[str, bool] = Field(default_factory=dict)


class BackdoorSummary(BackdoorEffect):
    """``summary["backdoor"]`` (engine.analyses.backdoor): the attack, its effect on this
    run, the null (the clean federation), the control (the same attack against FedAvg) and
    the verdict (implanted | partial | stopped | inconclusive | attack_too_weak)."""

    attack: str = ""
    malicious: list[int] = Field(default_factory=list)
    malicious_names: list[str] = Field(default_factory=list)
    trigger: dict[str, Any] = Field(default_factory=dict)
    target_region: str = ""
    shift_hu: float = 0.0
    threshold_hu: float = 100.0
    boost: float | None = None
    null: BackdoorEffect = Field(default_factory=BackdoorEffect)
    control: BackdoorEffect | None = None
    control_null: BackdoorEffect | None = None  # the control's own clean federation
    clean_mae_hu: float | None = None
    clean_federation_mae_hu: float | None = None
    clean_mae_ratio: float | None = None
    # This run's error ÷ plain FedAvg's without the attacker (the defense's cost; None:
    # undefended, where it is clean_mae_ratio).
    defense_mae_ratio: float | None = None
    # Rounds the backdoor stayed implanted after the attacker stopped (None: it never
    # stopped), and each later round's effect (round, success_hu, patients_backdoored).
    durability_rounds: int | None = None
    after_stop: list[dict[str, float | int | None]] = Field(default_factory=list)
    # The mean shift under the trigger after each evaluated round (round, success_hu), of
    # this run and of the control.
    per_round: list[dict[str, float | None]] = Field(default_factory=list)
    control_per_round: list[dict[str, float | None]] = Field(default_factory=list)
    # Per hospital (center name): the share of rounds FLAME admitted its upload
    # ("admitted") or FLTrust's mean trust score in it ("trust"); empty under other rules.
    server_filter: dict[str, dict[str, float]] = Field(default_factory=dict)
    verdict: str = ""
    # One triggered slice (hospital, png and npz paths in the run folder); None: not saved.
    example: dict[str, str] | None = None


class WhatifMembership(_Block):
    attack: str = ""
    score: float = 0.0
    rank: float = 0.0
    exposed: bool = False
    nonmembers: int = 0
    chance_rate: float | None = None  # None: an older run
    member_scores: list[float] = Field(default_factory=list)
    nonmember_scores: list[float] = Field(default_factory=list)


class WhatifReconstruction(_Block):
    n: int = 0
    pairs: list[tuple[int, int]] = Field(default_factory=list)
    ssim: float | None = None
    ssim_body: float | None = None
    ssim_ct: float | None = None
    psnr_db: float | None = None
    floor_ssim: float | None = None
    floor_ssim_body: float | None = None
    gain: float | None = None
    threshold: float | None = None
    leak: bool | None = None
    null_ssim_body: float | None = None
    p_value: float | None = None
    reference_patients: int | None = None
    verdict: str | None = None


class WhatifSummary(_Block):
    patient: str = ""
    center: str = ""
    membership: WhatifMembership | None = None
    reconstruction: WhatifReconstruction | None = None


class Environment(_Block):
    """``environment``: what besides the config decided the figures (see
    :func:`engine.analyses.summary.run_environment`)."""

    threads: int = 0
    device: str = ""
    cpu_capability: str = ""
    kernel_limits: dict[str, str] = Field(default_factory=dict)
    cpu: str = ""
    torch: str = ""
    monai: str = ""
    precision: str = ""
    runtime: str = ""
    training: str = ""
    batched_centers: list[int] = Field(default_factory=list)


class DPAuditSummary(_Block):
    """``dp_audit``: an empirical lower bound on ε from canaries (engine/attacks/dp_audit.py)."""

    kind: str = "client"  # client (canary hospitals) | patient (canary patients in DP-SGD)
    epsilon_lower_bound: float = 0.0
    estimator: str = "one_run"
    canaries: int = 0
    present: int = 0
    confidence: float = 0.95
    cap: float = 0.0
    accountant_epsilon: float | None = None  # None: ε = ∞ (no noise)
    delta: float = 1e-5
    verdict: str = "consistent"  # consistent | violation | weak_audit
    guesses: int = 0
    correct: int = 0
    one_shot_estimate: float | None = None
    clopper_pearson: float | None = None
    rounds: int = 0  # rounds the scores rest on
    observed: str = "uploads"  # uploads | aggregate (secure aggregation)
    seconds: float = 0.0


class RunSummary(_Block):
    """A finished run's ``summary.json``."""

    config: dict[str, Any] = Field(default_factory=dict)
    federation: FederationSummary = Field(default_factory=FederationSummary)
    data: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, Any] = Field(default_factory=dict)
    timing: dict[str, float] = Field(default_factory=dict)
    device: str = ""
    versions: dict[str, str] = Field(default_factory=dict)
    environment: Environment | None = None  # None: written before runs recorded it
    mia: MiaSummary | None = None
    inversion: InversionSummary | None = None
    poisoning: PoisoningSummary | None = None
    backdoor: BackdoorSummary | None = None
    whatif: WhatifSummary | None = None
    dp_audit: DPAuditSummary | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("name") or "run")

    @property
    def rule(self) -> str:
        """The server's rule with its pre-aggregator (:func:`rule_key`: ``nnm+fedmedian``)."""
        fed = self.config.get("federation")
        pre = fed.get("pre_aggregator") if isinstance(fed, dict) else None
        return rule_key(self.federation.aggregator, pre)


class SummaryError(ValueError):
    """A ``summary.json`` that cannot be read as a run summary (the message names the file
    and the first problem)."""


def parse_summary(data: Any, source: str = "summary.json") -> RunSummary:
    """A summary object → :class:`RunSummary`; :class:`SummaryError` when it is not one."""
    if not isinstance(data, dict):
        raise SummaryError(f"{source} holds {type(data).__name__}, not a run summary")
    try:
        return RunSummary.model_validate(data)
    except ValidationError as err:
        raise SummaryError(f"{source}: {_first_problem(err)}") from None


def _first_problem(err: ValidationError) -> str:
    """``where: what`` of a validation error's first problem, e.g. ``mia.auc: …``."""
    first = err.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def read_summary(path: Path) -> RunSummary | None:
    """The summary at ``path`` (``<run>/summary.json``); None when it does not exist (the run
    has not finished); :class:`SummaryError` when it is damaged."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise SummaryError(f"{path} cannot be read: {type(err).__name__}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise SummaryError(f"{path} is not valid JSON (half-written or damaged)") from None
    return parse_summary(data, str(path))
