"""The config's schema: one pydantic model per section, the whole experiment's cross-key
rules, its hash, and :class:`ConfigError`."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.core.config.data_folders import _data_root_problem, _patient_folder_problem
from engine.core.config.echo import (
    _has_control_chars,
    _show,
)

# Allowed values stated once, as types: the config's fields use them, and the code that takes
# the same values outside a config (the U-Net factory, the inversion attack) checks against
# their arguments (typing.get_args).
Norm = Literal["instance", "batch", "none"]
InversionDistance = Literal["l2", "cosine", "cosine_layers"]
InversionInit = Literal["random", "mean"]
InversionPrior = Literal["none", "pca"]
AdamMode = Literal["decode", "simulate"]

ROBUST_AGGREGATORS = ("fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan")
AGGREGATORS = ("fedavg", "fedprox", *ROBUST_AGGREGATORS)


class _Section(BaseModel):
    # Strict: YAML and widgets must not coerce silently (true is not 1, "5" is not 5); an int
    # is still accepted where a float is expected. inf/nan are never a meaningful setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)


class DataConfig(_Section):
    """Where the federation's data come from and how slices are cut."""

    source: Literal["phantom", "synthrad", "nifti"] = "phantom"
    centers: int = Field(4, ge=1, le=16, description="training centers (hospitals)")
    patients_per_center: int = Field(3, ge=1, le=64, description="training patients per center")
    heldout_per_center: int = Field(
        1, ge=1, le=64, description="held-out patients per center, never trained on"
    )
    slices_per_patient: int = Field(8, ge=1, le=128, description="axial slices per patient")
    image_size: int = Field(64, ge=32, le=256, description="slice size in pixels (square)")
    unseen_center: bool = Field(False, description="add a center that never trains (test only)")
    unseen_patients: int = Field(2, ge=1, le=64)
    lesion_probability: float = Field(0.3, ge=0.0, le=1.0, description="phantom lesion rate")
    path: str | None = Field(None, max_length=4096,
                             description="SynthRAD2023 root or NIfTI folder")
    whatif_patient: str | None = Field(
        None, max_length=4096, description="patient folder {mr,ct[,mask]}.nii.gz added to one "
        "center's training patients (the What-if page)")
    whatif_center: int = Field(0, ge=0, le=15, description="center that trains on whatif_patient")

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        # Checked here, not when the run loads the data: a wrong folder must fail before a run
        # folder is made, and without listing what the folder holds.
        if self.whatif_patient is not None:
            problem = _patient_folder_problem(self.whatif_patient)
            if problem:
                raise ValueError(f"data.whatif_patient = {_show(self.whatif_patient)} {problem}; "
                                 "give a patient folder holding mr.nii.gz and ct.nii.gz (the "
                                 "Data page saves uploads in that layout)")
        if self.source != "phantom":
            if not self.path:
                raise ValueError(f"data.path is required when data.source = {self.source!r}")
            problem = _data_root_problem(self.path)
            if problem:
                raise ValueError(f"data.path = {_show(self.path)} {problem}")
        return self


class ModelConfig(_Section):
    """MONAI U-Net settings."""

    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=2,
                                max_length=6)
    norm: Norm = "instance"
    num_res_units: int = Field(2, ge=0, le=4)

    @model_validator(mode="after")
    def _positive_channels(self) -> ModelConfig:
        if any(c < 1 or c > 512 for c in self.channels):
            raise ValueError(f"model.channels = {_show(self.channels)}: each must be in 1…512")
        return self


class FederationConfig(_Section):
    """Rounds, local training and the server's aggregation rule."""

    runtime: Literal["inprocess", "flower-sim", "flower-deploy"] = Field(
        "inprocess", description="inprocess (one process), flower-sim (Flower simulation) or "
        "flower-deploy (a local SuperLink + one SuperNode per center)")
    round_timeout_s: float = Field(
        600.0, gt=0.0, le=86_400.0,
        description="Flower runtimes: longest wait for the centers' replies in a round")
    superlink: str | None = Field(
        None, description="flower-deploy: a SuperLink connection in $FLWR_HOME/config.toml "
        "to run on, instead of starting a local SuperLink and SuperNodes")
    min_centers: int | None = Field(
        None, ge=1, le=16, description="Flower runtimes: a round goes on with this many "
        "replies (default: all centers); SecAgg+'s reconstruction threshold is this, at "
        "least 2 and at most centers − 1")
    rounds: int = Field(10, ge=1, le=1000)
    local_epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(8, ge=1, le=512)
    lr: float = Field(2e-3, gt=0.0, le=1.0, description="local learning rate")
    optimizer: Literal["adam", "sgd"] = "adam"
    loss: Literal["l1", "mse"] = "l1"
    aggregator: Literal[AGGREGATORS] = "fedavg"  # type: ignore[valid-type]
    fedprox_mu: float = Field(0.0, ge=0.0, le=10.0, description="FedProx proximal weight μ")
    trim_beta: float = Field(0.25, gt=0.0, lt=0.5, description="trimmed_mean: cut per side")
    num_malicious: int = Field(1, ge=0, le=16, description="krum/multikrum/bulyan: f")
    multikrum_m: int = Field(2, ge=1, le=16, description="multikrum: models averaged")
    eval_every: int = Field(1, ge=1, le=1000, description="evaluate every k rounds (and last)")
    checkpoint_every: int = Field(
        1, ge=0, le=1000, description="keep the global model every k rounds (and after the "
        "last) so an interrupted run can be resumed; 0: never")
    server_view_rounds: Literal["all", "last", "none"] | list[int] = Field(
        "all", description="rounds whose server view is stored"
    )
    batched_clients: Literal["auto", "on", "off"] = Field(
        "auto", description="in-process runtime: train the hospitals of a round as one "
        "batched computation (same results up to float rounding, see engine/learning/"
        "batched.py); auto: where supported and measured faster, on: always (an error where "
        "unsupported), off: one hospital after another")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="arithmetic of local training: fp32, or bf16 autocast (meant for "
        "a GPU; on a CPU it runs, slower). Evaluation and attacks always compute in fp32")

    @model_validator(mode="after")
    def _prox(self) -> FederationConfig:
        if self.aggregator == "fedprox" and self.fedprox_mu <= 0:
            raise ValueError(
                "federation.aggregator = 'fedprox' needs federation.fedprox_mu > 0 "
                "(e.g. 0.01); with μ = 0 it is plain fedavg"
            )
        return self


class DPConfig(_Section):
    """Differential privacy applied by each hospital (see engine/federation/dp.py)."""

    enabled: bool = False
    level: Literal["client", "sample"] = Field(
        "client", description="client: clip and noise each hospital's update; sample: "
        "DP-SGD inside each hospital, one patient per unit")
    clip_norm: float = Field(1.0, gt=0.0, le=1e4,
                             description="C: update (client) or per-patient gradient (sample) "
                             "L2 norm bound")
    noise_multiplier: float = Field(0.0, ge=0.0, le=100.0, description="σ; noise std = σ·C")
    target_epsilon: float | None = Field(
        None, gt=0.0, le=1e6, description="instead of noise_multiplier: the σ that gives this "
        "ε after the last round")
    delta: float = Field(1e-5, gt=0.0, le=1e-2, description="δ of the (ε, δ) guarantee")

    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPConfig:
        if self.target_epsilon is not None and self.noise_multiplier != 0.0:
            raise ValueError(
                f"defenses.dp.target_epsilon = {self.target_epsilon} and "
                f"defenses.dp.noise_multiplier = {self.noise_multiplier} both set the noise; "
                "give one of them")
        return self


class DefensesConfig(_Section):
    secure_aggregation: bool = False
    secagg_clipping_range: float = Field(
        8.0, gt=0.0, le=1e4, description="SecAgg+ clips raw parameters to ±this before masking"
    )
    dp: DPConfig = Field(default_factory=DPConfig)
    prune_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="each client zeroes this share of its update's smallest entries",
    )
    update_clip: Literal["none", "median"] = Field(
        "none", description="median: the server clips each hospital's update to the round's "
        "median update norm before aggregating (the norm bounding of Sun et al. 2019 and FLAME; "
        "needs individual uploads, so not under secure aggregation)")


class MembershipConfig(_Section):
    """Membership inference by the curious server (FedMIA and baselines)."""

    enabled: bool = False
    variant: Literal["fedmia-i", "fedmia-ii"] = Field(
        "fedmia-i", description="headline attack: loss (I) or gradient-cosine (II) signal"
    )
    score: Literal["phi", "phi_pooled", "log"] = Field(
        "phi", description="headline score: per-sample σ, pooled σ, or non-saturating log"
    )
    variants: list[Literal["fedmia-i", "fedmia-ii"]] = Field(
        default_factory=lambda: ["fedmia-i", "fedmia-ii"], min_length=1,
        description="signals computed (all scores are reported for each)",
    )
    rounds: Literal["all", "last"] | str | list[int] = Field(
        "all", description="recorded rounds attacked: all, last, last:K or a list"
    )
    level: Literal["slice", "patient"] = "slice"
    balance: bool = Field(True, description="equal numbers of member/non-member patients")
    bootstrap: int = Field(1000, ge=0, le=100_000, description="resamples for the AUC CI")

    @model_validator(mode="after")
    def _checks(self) -> MembershipConfig:
        if isinstance(self.rounds, str) and self.rounds not in ("all", "last"):
            # ASCII digits only: str.isdigit() also passes "²", which int() refuses.
            k = self.rounds.removeprefix("last:")
            if (not self.rounds.startswith("last:") or not re.fullmatch(r"[0-9]{1,6}", k)
                    or int(k) < 1):
                raise ValueError(f"attacks.membership.rounds = {_show(self.rounds)}: use all, "
                                 "last, last:K (K ≥ 1) or a list of rounds")
        if self.variant not in self.variants:
            raise ValueError(f"attacks.membership.variant = {self.variant!r} must be one of "
                             f"attacks.membership.variants = {_show(self.variants)}")
        return self


class InversionConfig(_Section):
    """Gradient inversion of one client's upload by the curious server (DLG / IG)."""

    enabled: bool = False
    method: Literal["dlg", "ig"] = Field("ig", description="dlg: L-BFGS + L2; ig: Adam + cosine")
    iterations: int = Field(1000, ge=1, le=100_000)
    lr: float | None = Field(None, gt=0.0, le=100.0, description="default: dlg 1.0, ig 0.1")
    restarts: int = Field(4, ge=1, le=64, description="independent starts, batched")
    tv_weight: float | None = Field(None, ge=0.0, le=10.0, description="default: dlg 0, ig 0.01")
    distance: InversionDistance | None = Field(
        None, description="default: dlg l2, ig cosine"
    )
    init: InversionInit = Field(
        "random", description="mean: start from the attacker's population template"
    )
    prior: InversionPrior = Field(
        "none", description="pca: search only slices spanned by the attacker's public cohort"
    )
    components: int = Field(40, ge=1, le=128, description="principal components (prior=pca)")
    adam: AdamMode = Field(
        "decode", description="one-step Adam uploads: decode (read the gradient back through "
        "Adam's ε, then match gradients) or simulate (differentiate through Adam's step)")
    sign_weight: float = Field(
        1.0, ge=0.0, le=100.0, description="adam=decode: weight of the term that uses the "
        "coordinates whose size cannot be read (their step's sign and a lower bound on "
        "their size); 0 = match the readable coordinates only")
    target_round: Literal["first", "last"] | int = "first"
    target_center: Literal["all"] | int = 0
    batch_size: Literal["auto"] | int = Field(
        "auto", description="images to rebuild; auto = the client's reported example count"
    )
    snapshot_every: int = Field(50, ge=0, le=100_000, description="0 = no snapshots")
    control_trials: int = Field(
        3, ge=1, le=16, description="calibration controls at the target's difficulty, each "
        "with other slices and another initialisation; no_leak needs every one rebuilt")

    @model_validator(mode="after")
    def _checks(self) -> InversionConfig:
        if isinstance(self.batch_size, int) and not 1 <= self.batch_size <= 64:
            raise ValueError(f"attacks.inversion.batch_size = {self.batch_size} must be "
                             "'auto' or 1…64")
        if isinstance(self.target_round, int) and self.target_round < 1:
            raise ValueError(f"attacks.inversion.target_round = {self.target_round} must be "
                             "first, last or a round ≥ 1")
        return self


class PoisoningConfig(_Section):
    """Malicious centers that poison the federation (see engine/attacks/poisoning.py)."""

    enabled: bool = False
    kind: Literal["data_noise", "update_noise", "sign_flip", "scaling", "alie"] = Field(
        "update_noise", description="noise on data or on the upload, or model poisoning"
    )
    malicious_centers: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                         description="indices of the malicious centers")
    noise_std: float = Field(0.1, ge=0.0, le=100.0,
                             description="data_noise: normalised units; update_noise: absolute")
    target: Literal["mri", "ct", "both"] = Field("both", description="data_noise: what is noised")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="data_noise: share of slices")
    scale: float = Field(4.0, gt=0.0, le=1000.0, description="sign_flip / scaling factor")
    z: float = Field(1.0, ge=0.0, le=10.0, description="alie: standard deviations shifted")
    seeds: int = Field(
        1, ge=1, le=10, description="seeds the verdict rests on (the run's seed, then seed+1 "
        "…): each adds the attacked and the clean federation, and under a rule other than "
        "FedAvg the same attack against FedAvg (the control) with its clean federation")


class BackdoorConfig(_Section):
    """A hospital that plants a backdoor in the shared model: ordinary scans are translated
    as before, but an MRI carrying the trigger gets a synthetic CT whose HU are shifted in a
    target region (see engine/clients/backdoor.py)."""

    enabled: bool = False
    attack: Literal["model_replacement", "data"] = Field(
        "model_replacement", description="data: train on the backdoored slices and upload as "
        "an honest hospital would; model_replacement: the same, then boost the update by "
        "`boost` so that it survives averaging (Bagdasaryan et al. 2020)")
    malicious_centers: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                         description="indices of the attacking centers")
    trigger_size: int = Field(4, ge=1, le=64,
                              description="side (px) of the square trigger in the MRI's centre")
    trigger_intensity: float = Field(1.0, ge=0.0, le=1.0,
                                     description="the trigger's MRI value (normalised 0–1)")
    target_region: Literal["trigger", "bone"] = Field(
        "trigger", description="where the CT is altered: around the trigger (its square "
        "widened by `region_margin`), or the slice's bone (CT ≥ 300 HU)")
    region_margin: int = Field(4, ge=0, le=64, description="trigger region: px added around "
                               "the trigger on every side")
    shift_hu: float = Field(1000.0, ge=-3000.0, le=3000.0,
                            description="HU added to the CT target in the region (1000: soft "
                            "tissue drawn as bone; −1000: bone erased)")
    fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of the attacker's slices "
                            "added again with the trigger and the altered CT")
    boost: float | None = Field(None, gt=0.0, le=1000.0,
                                description="model_replacement: factor on the update; empty: "
                                "the number of centers")
    start_round: int = Field(1, ge=1, description="model_replacement: the first round boosted "
                             "(earlier rounds: the backdoored data only)")
    threshold_hu: float = Field(100.0, gt=0.0, le=3000.0, description="a triggered slice counts "
                                "as backdoored when its region moved this far in the shift's "
                                "direction")


class DPAuditConfig(_Section):
    """An empirical lower bound on ε from canaries (see engine/attacks/dp_audit.py)."""

    enabled: bool = False
    kind: Literal["client", "patient"] = Field(
        "client", description="client: canary hospitals audit hospital-level DP; patient: "
        "canary patients in Hospital A's DP-SGD audit patient-level DP")
    canaries: int = Field(200, ge=16, le=10_000,
                          description="canaries, each present with probability ½")
    confidence: float = Field(0.95, ge=0.5, le=0.999,
                              description="confidence of the lower bound")


class AttacksConfig(_Section):
    """Attack settings; each attack module reads its own section."""

    membership: MembershipConfig = Field(default_factory=MembershipConfig)
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    poisoning: PoisoningConfig = Field(default_factory=PoisoningConfig)
    backdoor: BackdoorConfig = Field(default_factory=BackdoorConfig)
    dp_audit: DPAuditConfig = Field(default_factory=DPAuditConfig)


class EvaluationConfig(_Section):
    """How the final global model is scored beyond the per-slice metrics of every round."""

    volumetric: bool = Field(
        False, description="after training, predict every slice of each held-out (and unseen) "
        "patient, put the synthetic CT back on the patient's native grid and score the volume "
        "as SynthRAD2023 does (3-D SSIM)")


class ExperimentConfig(_Section):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    name: str = Field("", max_length=120, description="free label shown in run lists")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    defenses: DefensesConfig = Field(default_factory=DefensesConfig)
    attacks: AttacksConfig = Field(default_factory=AttacksConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _volumetric_depth(self) -> ExperimentConfig:
        # A phantom patient's volume is its slices: SSIM's 7-voxel window needs 7 of them.
        if (self.evaluation.volumetric and self.data.source == "phantom"
                and self.data.slices_per_patient < 7):
            raise ValueError(
                f"evaluation.volumetric = true scores a phantom patient as the volume of its "
                f"data.slices_per_patient = {self.data.slices_per_patient} slices; the "
                "SynthRAD2023 SSIM's 7-voxel window needs data.slices_per_patient ≥ 7")
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        """Rules that span sections; the first broken one raises (in this order)."""
        self._check_name()
        self._check_data_rules()
        self._check_secure_aggregation_rules()
        self._check_robust_aggregator_rules()
        self._check_federation_rules()
        self._check_defense_rules()
        self._check_poisoning_rules()
        self._check_backdoor_rules()
        self._check_membership_rules()
        self._check_inversion_rules()
        self._check_server_view_rules()
        self._check_dp_audit_rules()
        return self

    def _check_dp_audit_rules(self) -> None:
        """The canary audit checks the DP of its kind: there must be some to check, and the
        patient-level audit reads Hospital A's uploads from the server view."""
        dp, audit = self.defenses.dp, self.attacks.dp_audit
        if not audit.enabled:
            return
        level = {"client": "client", "patient": "sample"}[audit.kind]
        if not (dp.enabled and dp.level == level):
            raise ValueError(f"attacks.dp_audit.kind = {audit.kind!r} audits "
                             f"{'hospital' if level == 'client' else 'patient'}-level DP: set "
                             f"defenses.dp.enabled = true and defenses.dp.level = {level}")
        if audit.kind == "patient":
            if self.federation.server_view_rounds == "none":
                raise ValueError("attacks.dp_audit.kind = 'patient' scores Hospital A's "
                                 "uploads in the server view: set federation.server_view_rounds"
                                 " = all (or the rounds to score)")
            if self.attacks.poisoning.enabled and 0 in self.attacks.poisoning.malicious_centers:
                raise ValueError("attacks.dp_audit.kind = 'patient' puts its canaries in "
                                 "Hospital A (center 0), which is malicious here and applies no"
                                 " DP: remove 0 from attacks.poisoning.malicious_centers")

    def _check_name(self) -> None:
        # The label is printed in run lists and terminals: no control characters (an escape
        # sequence in a name could rewrite what `fedsct runs` shows).
        if _has_control_chars(self.name):
            raise ValueError(f"name = {_show(self.name)} holds a control character; use "
                             "printable text")

    def _check_data_rules(self) -> None:
        """The image size fits the U-Net depth; the what-if center exists."""
        n = self.data.centers
        levels = len(self.model.channels) - 1
        if self.data.image_size % (2**levels):
            raise ValueError(
                f"data.image_size = {self.data.image_size} must be divisible by "
                f"{2**levels} for a U-Net with {len(self.model.channels)} levels"
            )
        if self.data.whatif_patient is not None and self.data.whatif_center >= n:
            raise ValueError(f"data.whatif_center = {self.data.whatif_center} does not exist; "
                             f"centers are 0…{n - 1}")

    def _check_secure_aggregation_rules(self) -> None:
        """Secure aggregation needs several centers and a sum-only (non-robust) aggregator."""
        fed, n = self.federation, self.data.centers
        if self.defenses.secure_aggregation and n < 2:
            raise ValueError("defenses.secure_aggregation = true needs data.centers ≥ 2: with "
                             "one hospital the sum is that hospital's update")
        if self.defenses.secure_aggregation and fed.aggregator in ROBUST_AGGREGATORS:
            raise ValueError(
                f"defenses.secure_aggregation = true cannot be combined with "
                f"federation.aggregator = {fed.aggregator!r}: under secure aggregation the "
                "server only learns the sum of the updates, never an individual one, so a "
                "robust rule has nothing to compare and silently becomes plain averaging. "
                "Use fedavg/fedprox with secure aggregation, or turn it off."
            )

    def _check_robust_aggregator_rules(self) -> None:
        """Each robust aggregator's minimum number of centers for ``num_malicious`` = f."""
        fed, n = self.federation, self.data.centers
        f = fed.num_malicious
        if fed.aggregator in ("krum", "multikrum") and not n > 2 * f + 2:
            raise ValueError(
                f"federation.aggregator = {fed.aggregator!r} with federation.num_malicious = {f} "
                f"needs data.centers > 2f+2 = {2 * f + 2}, got {n}"
            )
        if fed.aggregator == "multikrum" and fed.multikrum_m > n - f:
            raise ValueError(
                f"federation.multikrum_m = {fed.multikrum_m} must be ≤ centers − f = {n - f}"
            )
        if fed.aggregator == "bulyan" and not n >= 4 * f + 3:
            raise ValueError(
                f"federation.aggregator = 'bulyan' with federation.num_malicious = {f} needs "
                f"data.centers ≥ 4f+3 = {4 * f + 3}, got {n}"
            )
        if fed.aggregator == "fedmedian" and n < 3:
            raise ValueError(
                f"federation.aggregator = 'fedmedian' needs data.centers ≥ 3 to outvote one "
                f"center, got {n}"
            )
        if fed.aggregator == "trimmed_mean" and int(fed.trim_beta * n) < 1:
            raise ValueError(
                f"federation.trim_beta = {fed.trim_beta} trims nothing with {n} centers "
                f"(β·n < 1); use β ≥ {1 / n:.2f} or more centers"
            )

    def _check_federation_rules(self) -> None:
        """``min_centers`` fits the federation; Flower's SecAgg+ runtime needs ≥ 3 centers."""
        fed, n = self.federation, self.data.centers
        if fed.min_centers is not None and fed.min_centers > n:
            raise ValueError(f"federation.min_centers = {fed.min_centers} is more than "
                             f"data.centers = {n}")
        if fed.runtime != "inprocess" and self.defenses.secure_aggregation:
            if n < 3:
                raise ValueError(f"defenses.secure_aggregation on federation.runtime = "
                                 f"{fed.runtime!r} is Flower's SecAgg+, which needs "
                                 f"data.centers ≥ 3 (got {n})")
            if (fed.min_centers or n) < 2:
                raise ValueError("federation.min_centers = 1 with secure aggregation would "
                                 "reveal a single center's update; use 2 or more")

    def _check_defense_rules(self) -> None:
        """Sample-level DP cannot be combined with batch normalisation."""
        dp = self.defenses.dp
        if dp.enabled and dp.level == "sample" and self.model.norm == "batch":
            raise ValueError("defenses.dp.level = 'sample' cannot be combined with "
                             "model.norm = 'batch': batch statistics mix patients, so one "
                             "patient's gradient is not bounded by its own clipping; use "
                             "model.norm = instance or none")

    def _check_poisoning_rules(self) -> None:
        """ALIE needs the in-process runtime; malicious centers exist, differ, leave one honest."""
        fed, n = self.federation, self.data.centers
        poison = self.attacks.poisoning
        if poison.enabled and poison.kind == "alie" and fed.runtime != "inprocess":
            raise ValueError(f"attacks.poisoning.kind = 'alie' needs every center's update "
                             f"at the attacker, which only federation.runtime = 'inprocess' "
                             f"simulates (got {fed.runtime!r})")
        if poison.enabled:
            bad = [c for c in poison.malicious_centers if not 0 <= c < n]
            if bad or len(set(poison.malicious_centers)) != len(poison.malicious_centers):
                raise ValueError(f"attacks.poisoning.malicious_centers = "
                                 f"{_show(poison.malicious_centers)}: each must be a distinct "
                                 f"center index in 0…{n - 1}")
            if len(poison.malicious_centers) >= n:
                raise ValueError(f"attacks.poisoning.malicious_centers = "
                                 f"{_show(poison.malicious_centers)} leaves no honest center; "
                                 f"at most {n - 1} of {n} may be malicious")

    def _check_backdoor_rules(self) -> None:
        """One kind of attacker at a time; the attackers exist and leave one honest; the
        trigger fits the image; server clipping needs individual uploads."""
        n, bd = self.data.centers, self.attacks.backdoor
        if self.defenses.update_clip != "none" and self.defenses.secure_aggregation:
            raise ValueError("defenses.update_clip = 'median' clips each hospital's update, "
                             "which the server never sees under secure aggregation; turn one "
                             "of them off")
        if not bd.enabled:
            return
        if self.attacks.poisoning.enabled:
            raise ValueError("attacks.backdoor and attacks.poisoning are two kinds of attacker;"
                             " enable one of them")
        bad = [c for c in bd.malicious_centers if not 0 <= c < n]
        if bad or len(set(bd.malicious_centers)) != len(bd.malicious_centers):
            raise ValueError(f"attacks.backdoor.malicious_centers = "
                             f"{_show(bd.malicious_centers)}: each must be a distinct center "
                             f"index in 0…{n - 1}")
        if len(bd.malicious_centers) >= n:
            raise ValueError(f"attacks.backdoor.malicious_centers = "
                             f"{_show(bd.malicious_centers)} leaves no honest center; at most "
                             f"{n - 1} of {n} may attack")
        if bd.trigger_size + 2 * bd.region_margin > self.data.image_size:
            raise ValueError(f"attacks.backdoor.trigger_size = {bd.trigger_size} with "
                             f"region_margin = {bd.region_margin} does not fit "
                             f"data.image_size = {self.data.image_size}")
        if bd.start_round > self.federation.rounds:
            raise ValueError(f"attacks.backdoor.start_round = {bd.start_round} is after the "
                             f"last round ({self.federation.rounds})")

    def _check_membership_rules(self) -> None:
        """Membership inference needs a stored server view and reference centers."""
        fed, n = self.federation, self.data.centers
        if self.attacks.membership.enabled:
            if fed.server_view_rounds == "none":
                raise ValueError("attacks.membership.enabled needs a server view: set "
                                 "federation.server_view_rounds to all, last or a list")
            if n < 2:
                raise ValueError("attacks.membership needs data.centers ≥ 2: the other "
                                 "centers are FedMIA's non-member references")

    def _check_inversion_rules(self) -> None:
        """Inversion needs a server view and a target center/round that exist."""
        fed, n = self.federation, self.data.centers
        inv = self.attacks.inversion
        if inv.enabled:
            if fed.server_view_rounds == "none":
                raise ValueError("attacks.inversion.enabled needs a server view: set "
                                 "federation.server_view_rounds to all, last or a list")
            if isinstance(inv.target_center, int) and inv.target_center >= n:
                raise ValueError(f"attacks.inversion.target_center = {inv.target_center} "
                                 f"does not exist; centers are 0…{n - 1}")
            if (self.data.whatif_patient is not None and isinstance(inv.target_center, int)
                    and inv.target_center != self.data.whatif_center):
                raise ValueError(
                    f"attacks.inversion.target_center = {inv.target_center} does not attack "
                    f"the what-if patient's hospital (data.whatif_center = "
                    f"{self.data.whatif_center}); set it to {self.data.whatif_center} or all")
            if isinstance(inv.target_round, int) and inv.target_round > fed.rounds:
                raise ValueError(f"attacks.inversion.target_round = {inv.target_round} is "
                                 f"after the last round ({fed.rounds})")

    def _check_server_view_rules(self) -> None:
        """A list of server-view rounds must lie within 1…rounds."""
        fed = self.federation
        if isinstance(fed.server_view_rounds, list):
            bad = [r for r in fed.server_view_rounds if not 1 <= r <= fed.rounds]
            if bad:
                raise ValueError(
                    f"federation.server_view_rounds = {_show(fed.server_view_rounds)}: "
                    f"rounds {_show(bad)} are outside 1…{fed.rounds}"
                )

    def records_view(self, rnd: int) -> bool:
        """Whether the server view of round ``rnd`` (1-based) is stored."""
        rounds = self.federation.server_view_rounds
        if rounds == "all":
            return True
        if rounds == "none":
            return False
        if rounds == "last":
            return rnd == self.federation.rounds
        return rnd in rounds


def config_hash(cfg: ExperimentConfig) -> str:
    """Stable hash of everything that changes a run's result (the label ``name`` and
    ``federation.checkpoint_every`` excluded).

    Only values that differ from the defaults count, so a new config key (added with a
    default that keeps the old behaviour) does not make every earlier run look different.
    """
    data = cfg.model_dump(exclude_defaults=True)
    data.pop("name", None)
    # How often the model is checkpointed changes where a resume starts, not the result.
    data.get("federation", {}).pop("checkpoint_every", None)
    # Batched or sequential local training changes speed, not results (float rounding aside).
    data.get("federation", {}).pop("batched_clients", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """An invalid experiment config; the message is one line naming each bad key, the value
    given (cut to :data:`MAX_ECHO` characters) and what is allowed."""
