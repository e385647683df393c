"""The experiment config: one validated schema for the CLI, the dashboard and the presets.

A bad value fails at validation with the key's dotted name, the value given and what is
allowed (:class:`ConfigError`, one short line). Keys are a public interface: extend, never
rename.

Types are strict (true is not 1, "5" is not 5). Config files and ``--set`` values are read as
YAML 1.2 with limits checked while parsing: no anchors, aliases or tags, no duplicate keys,
bounded size, depth and number of values (see :class:`_ConfigLoader`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROBUST_AGGREGATORS = ("fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan")
AGGREGATORS = ("fedavg", "fedprox", *ROBUST_AGGREGATORS)

# Limits on config input. A full config is about 3 KB, ~300 YAML nodes and 4 levels deep;
# these bounds are far above that and keep a hostile file from costing more than a fraction
# of a second or a few MB (the YAML parser is pure Python: ~40 µs per node).
MAX_CONFIG_BYTES = 256 * 1024
MAX_SET_CHARS = 64 * 1024
MAX_DEPTH = 20
MAX_NODES = 5_000
# Echoed input is cut to this many characters, so a message stays one short line.
MAX_ECHO = 80
# A data root is scanned for a patient folder up to this many entries (a cheap check, not
# a load: the run reads the images).
MAX_SCANNED_ENTRIES = 10_000


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
    norm: Literal["instance", "batch", "none"] = "instance"
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
    distance: Literal["l2", "cosine", "cosine_layers"] | None = Field(
        None, description="default: dlg l2, ig cosine"
    )
    init: Literal["random", "mean"] = Field(
        "random", description="mean: start from the attacker's population template"
    )
    prior: Literal["none", "pca"] = Field(
        "none", description="pca: search only slices spanned by the attacker's public cohort"
    )
    components: int = Field(40, ge=1, le=128, description="principal components (prior=pca)")
    adam: Literal["decode", "simulate"] = Field(
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


# --------------------------------------------------------------------------- echoing input

# Longest message: a few rule sentences, never a dump of the input.
MAX_MESSAGE = 500

_ECHO = reprlib.Repr()
_ECHO.maxstring = _ECHO.maxother = MAX_ECHO
_ECHO.maxlist = _ECHO.maxtuple = 12
_ECHO.maxdict = 6
_ECHO.maxlevel = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` on one line of at most ``limit`` characters."""
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any) -> str:
    """A value as a user would write it, cut short: echoing a hostile input in full (a huge
    string or structure) would make the error itself the problem."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _clip(_ECHO.repr(value))


def _key_text(key: Any) -> str:
    """A key as written when it is a short printable name, else quoted and cut short."""
    if isinstance(key, str) and len(key) <= MAX_ECHO and key.isprintable():
        return key
    return _show(key)


def _has_control_chars(text: str) -> bool:
    return _CONTROL.search(text) is not None


# --------------------------------------------------------------------------- data folders

_IMAGES = (("mr.nii.gz", "mr.nii"), ("ct.nii.gz", "ct.nii"))


def _missing_images(folder: Path) -> list[str]:
    return [names[0] for names in _IMAGES if not any((folder / n).is_file() for n in names)]


def _patient_folder_problem(path: str) -> str | None:
    """Why ``path`` is not a patient folder holding ``{mr,ct}.nii(.gz)``, or None. Only
    names are checked; the run reads the images."""
    if _has_control_chars(path):
        return "holds a control character"
    folder = Path(path)
    try:
        if not folder.is_dir():
            return "is not a folder"
        missing = _missing_images(folder)
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    return f"lacks {' and '.join(missing)}" if missing else None


def _data_root_problem(path: str) -> str | None:
    """Why ``path`` is not a SynthRAD2023-layout root ``<path>/<ID>/{mr,ct}.nii(.gz)`` (the
    ID's third character is the center letter), or None. A cheap scan that stops at the
    first patient folder; incomplete folders are the run's to report."""
    if _has_control_chars(path):
        return "holds a control character"
    root = Path(path)
    try:
        if not root.exists():
            return "does not exist"
        if not root.is_dir():
            return "is not a folder"
        with os.scandir(root) as entries:
            for k, entry in enumerate(entries):
                if k >= MAX_SCANNED_ENTRIES:
                    return (f"holds no patient folder among its first {MAX_SCANNED_ENTRIES} "
                            "entries")
                name = entry.name
                if (len(name) >= 3 and name[2].isalpha() and entry.is_dir()
                        and not _missing_images(Path(entry.path))):
                    return None
        hint = "; did you mean its brain subfolder?" if (root / "brain").is_dir() else ""
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    return ("holds no patient folder: expected <path>/<ID>/mr.nii.gz and ct.nii.gz (or .nii), "
            f"IDs like 1BA001 with the center letter third{hint}")


# --------------------------------------------------------------------------- validation

# What a field expects, by pydantic error type (strict mode), in the config's words.
_EXPECTED = {
    "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "text",
    "list_type": "a list", "model_type": "a mapping of keys", "dict_type": "a mapping of keys",
    "finite_number": "a finite number (not .inf or .nan)",
}
_NUMBER_WANTED = {"a whole number", "a number", "a finite number (not .inf or .nan)"}


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _error_key(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """A pydantic error location → the dotted config key, and the section that holds it
    (pydantic's names of union members, e.g. ``list[int]``, are not keys and are dropped)."""
    model: type[BaseModel] | None = ExperimentConfig
    holder: type[BaseModel] | None = None
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            if parts:
                parts[-1] += f"[{part}]"
        elif model is not None:
            holder = model
            parts.append(_key_text(part))
            field = model.model_fields.get(part)
            model = _submodel(field.annotation) if field else None
    return ".".join(parts), holder


def _unknown_key(key: str, name: Any, holder: type[BaseModel] | None) -> str:
    fields = list(holder.model_fields) if holder else []
    close = difflib.get_close_matches(str(name)[:MAX_ECHO], fields, n=1)
    if close:
        return f"{key}: unknown key (did you mean {close[0]}?)"
    return f"{key}: unknown key (allowed here: {_clip(', '.join(fields), 160)})"


def _type_hint(value: Any, wanted: set[str]) -> str:
    if isinstance(value, bool) and wanted & _NUMBER_WANTED:
        return " (true/false is not a number)"
    if isinstance(value, str) and wanted & _NUMBER_WANTED:
        return " (text is not a number; write e.g. 16 or 0.003)"
    if isinstance(value, int | float) and not isinstance(value, bool) and "text" in wanted:
        return " (quote it to give text)"
    return ""


def _field_message(key: str, errors: list[dict[str, Any]]) -> str:
    """One field's errors (several for a union type) as one sentence."""
    rules: list[str] = []
    wanted: set[str] = set()
    for e in errors:
        if e["type"] in _EXPECTED:
            wanted.add(_EXPECTED[e["type"]])
            rule = f"should be {_EXPECTED[e['type']]}"
        else:
            msg = _clip(e["msg"].removeprefix("Value error, "), 160)
            rule = ("should be " + msg.removeprefix("Input should be ")
                    if msg.startswith("Input should be ") else msg[:1].lower() + msg[1:])
        if rule not in rules:
            rules.append(rule)
    if all(r.startswith("should be ") for r in rules):
        text = "should be " + ", or ".join(r.removeprefix("should be ") for r in rules)
    else:
        text = "; ".join(rules)
    value = errors[0].get("input")
    return f"{key} = {_show(value)} is not allowed: {text}{_type_hint(value, wanted)}"


def _format_validation_error(err: ValidationError) -> str:
    fields: dict[str, list[dict[str, Any]]] = {}
    messages: list[str] = []
    for e in err.errors(include_url=False):
        key, holder = _error_key(e["loc"])
        if e["type"] == "extra_forbidden":
            messages.append(_unknown_key(key, e["loc"][-1], holder))
        elif e["type"] == "value_error" or not key:
            messages.append(_clip(e["msg"].removeprefix("Value error, "), MAX_MESSAGE))
        else:
            if key not in fields:
                messages.append(key)  # placeholder, filled in below, keeps the order
            fields.setdefault(key, []).append(e)
    # A list given to a "name or list" field (server_view_rounds) fails both ways; when its
    # items are what is wrong, the "should be 'all', 'last' or 'none'" half is noise.
    messages = [m for m in messages if not (m in fields and any(
        k.startswith(m + "[") for k in fields))]
    messages = [_field_message(m, fields[m]) if m in fields else m for m in messages]
    shown = "; ".join(messages[:3])
    more = f" (and {len(messages) - 3} more)" if len(messages) > 3 else ""
    return _clip(f"invalid experiment config: {shown}{more}", MAX_MESSAGE)


def validate_config(data: dict[str, Any]) -> ExperimentConfig:
    """Dict → :class:`ExperimentConfig`, or :class:`ConfigError` naming the bad keys."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------- reading YAML

_STR_TAG = "tag:yaml.org,2002:str"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
# At most 18 digits: Python refuses to parse very long integers (a ValueError, not YAML's).
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,17})\Z")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?\Z")
_SPECIAL_FLOAT = re.compile(r"[-+]?\.(?:inf|Inf|INF)\Z|\.(?:nan|NaN|NAN)\Z")


def _plain_scalar_tag(value: str) -> str:
    """The type of an unquoted YAML value, as YAML 1.2 reads it: null, true/false, a decimal
    integer, a float (``3e-3`` included) or text. YAML 1.1 (PyYAML's default) would read
    ``0x10`` as 16, ``010`` as 8, ``1:30`` as 90 and ``no`` as false; here they stay text, so
    a number or true/false field refuses them instead of taking a surprising value."""
    if value in _NULLS:
        return "tag:yaml.org,2002:null"
    if value in _BOOLS:
        return "tag:yaml.org,2002:bool"
    if _INT.match(value):
        return "tag:yaml.org,2002:int"
    if _FLOAT.match(value) or _SPECIAL_FLOAT.match(value):
        return "tag:yaml.org,2002:float"
    return _STR_TAG


class _Refused(yaml.MarkedYAMLError):
    """A YAML construct a config has no use for, found while composing."""


def _refused(problem: str, at: yaml.Event | yaml.Node) -> _Refused:
    return _Refused(problem=problem, problem_mark=at.start_mark)


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the checks made while composing, so that nothing big is
    built: no anchors or aliases (a few hundred bytes of them expand to gigabytes), no tags,
    keys are unique names, at most :data:`MAX_DEPTH` levels and :data:`MAX_NODES` values.
    Plain values are typed by :func:`_plain_scalar_tag`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._keys: list[str] = []

    def resolve(self, kind: type[yaml.Node], value: str | None,
                implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0] and value is not None:
            return _plain_scalar_tag(value)
        return super().resolve(kind, value, implicit)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _refused("anchors and aliases (&name, *name) are not allowed in a config",
                           event)
        if getattr(event, "tag", None) is not None:
            raise _refused(f"YAML tags ({_clip(event.tag, 40)}) are not allowed in a config",
                           event)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _refused(f"more than {MAX_NODES} values (a config has a few hundred)",
                           event)
        if isinstance(event, yaml.ScalarEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _refused(f"nested more than {MAX_DEPTH} levels deep", event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        start = self.get_event()
        node = yaml.MappingNode(self.resolve(yaml.MappingNode, None, start.implicit), [],
                                start.start_mark, None, flow_style=start.flow_style)
        first_seen: dict[str, yaml.Mark] = {}
        while not self.check_event(yaml.MappingEndEvent):
            key = self.compose_node(node, None)
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR_TAG:
                raise _refused("a key must be a name (not a number, true/false, null, list "
                               "or mapping)", key)
            path = _key_text(".".join([*self._keys, key.value]))
            if key.value in first_seen:
                raise _refused(f"duplicate key {path} (first given on line "
                               f"{first_seen[key.value].line + 1})", key)
            first_seen[key.value] = key.start_mark
            self._keys.append(key.value)
            try:
                value = self.compose_node(node, key)
            finally:
                self._keys.pop()
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node


def _load_yaml(text: str) -> Any:
    """One YAML document → Python values, through :class:`_ConfigLoader`."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(err: Exception, where: bool = True) -> str:
    """A YAML error as one short line (PyYAML's own message spans several and quotes input)."""
    if isinstance(err, yaml.MarkedYAMLError):
        text = err.problem or err.context or "invalid YAML"
        if err.problem and err.context:
            text = f"{err.problem} ({err.context})"
        mark = err.problem_mark or err.context_mark
        if where and mark is not None:
            text += f" at line {mark.line + 1}, column {mark.column + 1}"
        return _clip(text, 200)
    if isinstance(err, yaml.reader.ReaderError):
        char = err.character if isinstance(err.character, str) else chr(err.character)
        return f"unacceptable character {char!r} at position {err.position}"
    return _clip(str(err), 200)


def _yaml_kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number",
            bool: "true/false"}.get(type(value), type(value).__name__)


_KEY_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_set(expr: str) -> dict[str, Any]:
    """``"federation.rounds=5"`` → ``{"federation": {"rounds": 5}}`` (the value is YAML, read
    as :func:`load_config_file` reads a file)."""
    if len(expr) > MAX_SET_CHARS:
        raise ConfigError(f"--set {_show(expr)}: {len(expr)} characters, at most "
                          f"{MAX_SET_CHARS} are allowed")
    if "=" not in expr:
        raise ConfigError(f"--set {_show(expr)}: expected KEY.PATH=VALUE, e.g. "
                          "federation.rounds=5")
    key, raw = expr.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip():
        raise ConfigError(f"--set {_show(expr)}: empty key")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"--set {_show(key)}: more than {MAX_DEPTH} levels of keys")
    bad = next((p for p in parts if not _KEY_PART.match(p)), None)
    if bad is not None:
        raise ConfigError(f"--set {_show(key.strip())}: {_show(bad)} is not a key name "
                          "(letters, digits and _, joined by dots)")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"--set {_show(expr)}: value is not valid YAML "
                          f"({_yaml_problem(err, where=False)})") from None
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON config file into a dict; a clear one-line error on anything else
    (size over :data:`MAX_CONFIG_BYTES`, not UTF-8, bad or refused YAML, not a mapping)."""
    p = Path(path)
    name = _show(str(p))
    if "\x00" in str(p):
        raise ConfigError(f"config file {name} is not a usable path (a NUL character)")
    try:
        problem = ("does not exist" if not p.exists() else
                   "is not a regular file" if not p.is_file() else None)
        if problem is None:
            with open(p, "rb") as fh:  # at most one byte past the limit, whatever it holds
                raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"config file {name} cannot be read "
                          f"({err.strerror or type(err).__name__})") from None
    if problem is not None:
        raise ConfigError(f"config file {name} {problem}")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                          "a config is a few KB of keys")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {name} is not UTF-8 text (byte "
                          f"0x{raw[err.start]:02x} at offset {err.start})") from None
    try:
        data = _load_yaml(text)
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"config file {name} is not valid YAML: {_yaml_problem(err)}") from None
    if data is None:
        raise ConfigError(f"config file {name} is empty; give a mapping of keys, e.g. "
                          "federation: {rounds: 5}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name} must hold a mapping of keys (e.g. federation: "
                          f"{{rounds: 5}}), not {_yaml_kind(data)}")
    return data


def config_from(base: dict[str, Any] | None = None, file: str | Path | None = None,
                sets: list[str] | tuple[str, ...] = (),
                overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults ← ``base`` (e.g. a preset's overrides) ← config file ← overrides ← ``--set``
    expressions, then validate (:func:`engine.orchestration.presets.build_config` starts
    from a named preset)."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    if file:
        data = deep_merge(data, load_config_file(file))
    if overrides:
        data = deep_merge(data, overrides)
    for expr in sets:
        data = deep_merge(data, parse_set(expr))
    return validate_config(data)
