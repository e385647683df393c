"""The config's schema: one pydantic model per section (the attacks' in ``attacks``), the
whole experiment's cross-key rules, its hash, and :class:`ConfigError`."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from engine.core.config.attacks import AttacksConfig
from engine.core.config.data_folders import _data_root_problem, _patient_folder_problem
from engine.core.config.echo import (
    _has_control_chars,
    _show,
)
from engine.core.config.robust import check_adaptive_rules, check_robust_rules
from engine.core.config.section import _Section

# Allowed values stated once, as types: the config's fields use them, and the code that takes
# the same values outside a config (the U-Net factory) checks against their arguments
# (typing.get_args). The attacks' own are in engine/core/config/attacks.py.
Norm = Literal["instance", "batch", "none"]

ROBUST_AGGREGATORS = ("fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan",
                      "centered_clipping", "dnc")
PRE_AGGREGATORS = ("none", "nnm", "arc")
AGGREGATORS = ("fedavg", "fedprox", *ROBUST_AGGREGATORS)


class DataConfig(_Section):
    """Where the federation's data come from and how slices are cut."""

    source: Literal["phantom", "synthrad", "nifti"] = "phantom"
    centers: int = Field(4, ge=1, le=64, description="training centers (hospitals)")
    patients_per_center: int = Field(3, ge=1, le=256, description="training patients per center")
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
        None, ge=1, le=64, description="Flower runtimes: a round goes on with this many "
        "replies (default: all centers); SecAgg+'s reconstruction threshold is this, at "
        "least 2 and at most centers − 1")
    rounds: int = Field(10, ge=1, le=1000)
    sample_rate: float = Field(
        1.0, gt=0.0, le=1.0, description="in-process runtime: each round every hospital takes "
        "part with this probability (Poisson sampling, seeded by the round), as in DP-FedAvg; "
        "server-side DP's accountant counts it (privacy amplification by sampling)")
    local_epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(8, ge=1, le=512)
    lr: float = Field(2e-3, gt=0.0, le=1.0, description="local learning rate")
    optimizer: Literal["adam", "sgd"] = "adam"
    loss: Literal["l1", "mse"] = "l1"
    aggregator: Literal[AGGREGATORS] = "fedavg"  # type: ignore[valid-type]
    fedprox_mu: float = Field(0.0, ge=0.0, le=10.0, description="FedProx proximal weight μ")
    trim_beta: float = Field(0.25, gt=0.0, lt=0.5, description="trimmed_mean: cut per side")
    num_malicious: int = Field(
        1, ge=0, le=64, description="f, the attackers the server's rule is built for: "
        "krum/multikrum/bulyan/dnc and the pre-aggregators nnm/arc")
    cc_tau: float = Field(
        1.0, gt=0.0, le=100.0, description="centered_clipping: the clipping radius τ as a "
        "multiple of the round's median update norm")
    pre_aggregator: Literal[PRE_AGGREGATORS] = Field(  # type: ignore[valid-type]
        "none", description="before the rule, on the individual updates: nnm (each "
        "replaced by the mean of its n − f nearest) or arc (the ⌊2f(n − f)/n⌋ longest "
        "clipped to the next one's norm), f = federation.num_malicious")
    multikrum_m: int = Field(2, ge=1, le=64, description="multikrum: models averaged")
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
    """Differential privacy (see engine/clients/dp.py)."""

    enabled: bool = False
    level: Literal["client", "sample", "server"] = Field(
        "client", description="client: each hospital clips and noises its update; sample: "
        "DP-SGD inside each hospital, one patient per unit; server: the server clips each "
        "update and noises their mean (DP-FedAvg; protects the global models, not the uploads "
        "the server receives)")
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
    flame: bool = Field(
        False, description="FLAME (Nguyen et al. 2022) instead of the aggregation rule: "
        "HDBSCAN on the updates' cosine distances admits the majority, each is clipped to the "
        "round's median update norm, they are averaged and Gaussian noise (flame_noise × that "
        "median) is added; needs individual uploads, federation.aggregator = fedavg and "
        "federation.pre_aggregator = none")
    flame_noise: float = Field(0.001, ge=0.0, le=1.0,
                               description="FLAME's noise, as a multiple of the median norm")
    fltrust: bool = Field(
        False, description="FLTrust (Cao et al. 2021) instead of the aggregation rule: the "
        "server trains the global model on its own small root set each round, weighs every "
        "update by its cosine with that update (negative: 0), rescales it to that update's "
        "norm and averages; needs individual uploads, federation.aggregator = fedavg and "
        "federation.pre_aggregator = none")
    fltrust_root_patients: int = Field(
        2, ge=1, le=64, description="patients in FLTrust's root set (phantom: drawn across "
        "the hospitals' scanner profiles; folders: patient folders no hospital uses)")
    update_clip: Literal["none", "median"] = Field(
        "none", description="median: the server clips each hospital's update to the round's "
        "median update norm before aggregating (the norm bounding of Sun et al. 2019 and FLAME; "
        "needs individual uploads, so not under secure aggregation)")


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
        check_robust_rules(self)
        self._check_federation_rules()
        self._check_defense_rules()
        self._check_server_rules()
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

    def _check_federation_rules(self) -> None:
        """``min_centers`` fits the federation; Flower's SecAgg+ runtime needs ≥ 3 centers;
        hospital sampling runs in process, on averaging, without attacks."""
        fed, n = self.federation, self.data.centers
        self._check_sampling_rules()
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

    def _check_sampling_rules(self) -> None:
        fed, d, a = self.federation, self.defenses, self.attacks
        if fed.sample_rate == 1.0:
            return
        what = f"federation.sample_rate = {fed.sample_rate:g}"
        clashes = [(f"federation.runtime = {fed.runtime!r}", fed.runtime != "inprocess"),
                   (f"federation.aggregator = {fed.aggregator!r}",
                    fed.aggregator not in ("fedavg", "fedprox")),
                   (f"federation.pre_aggregator = {fed.pre_aggregator!r}",
                    fed.pre_aggregator != "none"),
                   ("defenses.secure_aggregation = true", d.secure_aggregation),
                   ("defenses.flame = true", d.flame), ("defenses.fltrust = true", d.fltrust),
                   ("attacks.membership.enabled = true", a.membership.enabled),
                   ("attacks.inversion.enabled = true", a.inversion.enabled),
                   ("attacks.dp_audit.enabled = true", a.dp_audit.enabled),
                   ("data.whatif_patient", self.data.whatif_patient is not None),
                   ("attacks.poisoning.enabled = true", a.poisoning.enabled),
                   ("attacks.backdoor.enabled = true", a.backdoor.enabled)]
        for setting, clash in clashes:
            if clash:
                raise ValueError(
                    f"{what} leaves hospitals out of some rounds, which {setting} does not "
                    "support (sampling runs in process, on averaging without secure "
                    "aggregation, and the attacks and their reports follow every hospital in "
                    "every round); use federation.sample_rate = 1 or drop that setting")

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
        if poison.enabled and poison.kind in OMNISCIENT_KINDS and fed.runtime != "inprocess":
            raise ValueError(f"attacks.poisoning.kind = {poison.kind!r} needs every center's "
                             f"update at the attacker, which only federation.runtime = "
                             f"'inprocess' simulates (got {fed.runtime!r})")
        if poison.enabled:
            _check_attackers("attacks.poisoning.malicious_centers", poison.malicious_centers, n)
        if poison.enabled and poison.kind in OMNISCIENT_KINDS[1:]:
            check_adaptive_rules(self, len(poison.malicious_centers))

    def _check_server_rules(self) -> None:
        """FLAME, server-side DP and FLTrust each replace the aggregation with their own
        treatment of the individual updates: one of them at a time, on FedAvg, without secure
        aggregation, the server's update clipping or a pre-aggregator; update clipping and
        the pre-aggregators need individual uploads too."""
        d, agg = self.defenses, self.federation.aggregator
        pre = self.federation.pre_aggregator
        if d.update_clip != "none" and d.secure_aggregation:
            raise ValueError("defenses.update_clip = 'median' clips each hospital's update, "
                             "which the server never sees under secure aggregation; turn one "
                             "of them off")
        if pre != "none" and d.secure_aggregation:
            raise ValueError(f"federation.pre_aggregator = {pre!r} works on each hospital's "
                             "update, which the server never sees under secure aggregation; "
                             "use federation.pre_aggregator = none or turn it off")
        own = [name for name, on in (
            ("defenses.flame = true", d.flame),
            ("defenses.dp.level = 'server'", d.dp.enabled and d.dp.level == "server"),
            ("defenses.fltrust = true", d.fltrust)) if on]
        if not own:
            return
        clashes = [*own[1:],
                   *(["defenses.secure_aggregation = true"] if d.secure_aggregation else []),
                   *([f"federation.aggregator = {agg!r}"]
                     if agg not in ("fedavg", "fedprox") else []),
                   *([f"defenses.update_clip = {d.update_clip!r}"]
                     if d.update_clip != "none" else []),
                   *([f"federation.pre_aggregator = {pre!r}"] if pre != "none" else [])]
        if clashes:
            raise ValueError(f"{own[0]} aggregates the individual updates itself, so it cannot "
                             f"be combined with {clashes[0]}; use it with federation.aggregator"
                             " = fedavg and without secure aggregation, update clipping, a "
                             "pre-aggregator or another of FLAME, server-side DP and FLTrust")
        if d.flame and self.data.centers < 3:
            raise ValueError(f"defenses.flame = true looks for the majority of the updates: it "
                             f"needs data.centers ≥ 3, got {self.data.centers}")

    def _check_backdoor_rules(self) -> None:
        """One kind of attacker at a time; the attackers exist and leave one honest; the
        trigger fits the image."""
        n, bd = self.data.centers, self.attacks.backdoor
        if not bd.enabled:
            return
        if self.attacks.poisoning.enabled:
            raise ValueError("attacks.backdoor and attacks.poisoning are two kinds of attacker;"
                             " enable one of them")
        _check_attackers("attacks.backdoor.malicious_centers", bd.malicious_centers, n)
        if bd.attack == "constrain_scale" and self.federation.runtime != "inprocess":
            raise ValueError(f"attacks.backdoor.attack = 'constrain_scale' trains the attacker "
                             f"twice a round, which only federation.runtime = 'inprocess' "
                             f"simulates (got {self.federation.runtime!r})")
        if bd.trigger_size + 2 * bd.region_margin > self.data.image_size:
            raise ValueError(f"attacks.backdoor.trigger_size = {bd.trigger_size} with "
                             f"region_margin = {bd.region_margin} does not fit "
                             f"data.image_size = {self.data.image_size}")
        if bd.start_round > self.federation.rounds:
            raise ValueError(f"attacks.backdoor.start_round = {bd.start_round} is after the "
                             f"last round ({self.federation.rounds})")
        last = self.federation.rounds
        if bd.stop_round is not None and self.federation.runtime != "inprocess":
            raise ValueError("attacks.backdoor.stop_round follows the backdoor round by round "
                             "by training the same federation again in process, which "
                             "matches only an in-process run: use federation.runtime = "
                             "inprocess")
        if bd.stop_round is not None and not bd.start_round <= bd.stop_round < last:
            raise ValueError(f"attacks.backdoor.stop_round = {bd.stop_round} must be from "
                             f"start_round = {bd.start_round} to one round before the last "
                             f"({self.federation.rounds - 1}), so that rounds without the "
                             "attacker follow")

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


# Poisoning kinds whose attacker is given every center's update of the round (ALIE, then the
# adaptive attackers of engine.clients.adaptive).
OMNISCIENT_KINDS = ("alie", "min_max", "min_sum", "alie_opt", "ipm_opt", "fang_krum",
                    "fang_trim")


def _check_attackers(key: str, centers: list[int], n: int) -> None:
    """The attacking centers (``key``) are distinct indices of the ``n`` centers and leave
    one honest."""
    if any(not 0 <= c < n for c in centers) or len(set(centers)) != len(centers):
        raise ValueError(f"{key} = {_show(centers)}: each must be a distinct center index in "
                         f"0…{n - 1}")
    if len(centers) >= n:
        raise ValueError(f"{key} = {_show(centers)} leaves no honest center; at most "
                         f"{n - 1} of {n} may be malicious")


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
