"""The experiment config: one validated schema for the CLI, the dashboard and the presets.

A bad value fails at validation with the key's dotted name, the value given and what is
allowed (:class:`ConfigError`). Keys are a public interface: extend, never rename.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROBUST_AGGREGATORS = ("fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan")
AGGREGATORS = ("fedavg", "fedprox", *ROBUST_AGGREGATORS)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    path: str | None = Field(None, description="SynthRAD2023 root or NIfTI folder")
    whatif_patient: str | None = Field(
        None, description="patient folder {mr,ct[,mask]}.nii.gz added to one center's training "
        "patients (the What-if page)")
    whatif_center: int = Field(0, ge=0, le=15, description="center that trains on whatif_patient")

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.whatif_patient is not None and not Path(self.whatif_patient).is_dir():
            raise ValueError(f"data.whatif_patient = {self.whatif_patient!r} is not a folder; "
                             "give a patient folder holding mr.nii.gz and ct.nii.gz (the Data "
                             "page saves uploads in that layout)")
        if self.source != "phantom":
            if not self.path:
                raise ValueError(f"data.path is required when data.source = {self.source!r}")
            if not Path(self.path).exists():
                raise ValueError(f"data.path = {self.path!r} does not exist")
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
            raise ValueError(f"model.channels = {self.channels}: each must be in 1…512")
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
    server_view_rounds: Literal["all", "last", "none"] | list[int] = Field(
        "all", description="rounds whose server view is stored"
    )

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
            k = self.rounds.removeprefix("last:")
            if not self.rounds.startswith("last:") or not k.isdigit() or int(k) < 1:
                raise ValueError(f"attacks.membership.rounds = {self.rounds!r}: use all, last, "
                                 "last:K (K ≥ 1) or a list of rounds")
        if self.variant not in self.variants:
            raise ValueError(f"attacks.membership.variant = {self.variant!r} must be one of "
                             f"attacks.membership.variants = {self.variants}")
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
    target_round: Literal["first", "last"] | int = "first"
    target_center: Literal["all"] | int = 0
    batch_size: Literal["auto"] | int = Field(
        "auto", description="images to rebuild; auto = the client's reported example count"
    )
    snapshot_every: int = Field(50, ge=0, le=100_000, description="0 = no snapshots")

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


class AttacksConfig(_Section):
    """Attack settings; each attack module reads its own section."""

    membership: MembershipConfig = Field(default_factory=MembershipConfig)
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    poisoning: PoisoningConfig = Field(default_factory=PoisoningConfig)


class ExperimentConfig(_Section):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    name: str = Field("", max_length=120, description="free label shown in run lists")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    defenses: DefensesConfig = Field(default_factory=DefensesConfig)
    attacks: AttacksConfig = Field(default_factory=AttacksConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        fed, n = self.federation, self.data.centers
        levels = len(self.model.channels) - 1
        if self.data.image_size % (2**levels):
            raise ValueError(
                f"data.image_size = {self.data.image_size} must be divisible by "
                f"{2**levels} for a U-Net with {len(self.model.channels)} levels"
            )
        if self.data.whatif_patient is not None and self.data.whatif_center >= n:
            raise ValueError(f"data.whatif_center = {self.data.whatif_center} does not exist; "
                             f"centers are 0…{n - 1}")
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
        dp = self.defenses.dp
        if dp.enabled and dp.level == "sample" and self.model.norm == "batch":
            raise ValueError("defenses.dp.level = 'sample' cannot be combined with "
                             "model.norm = 'batch': batch statistics mix patients, so one "
                             "patient's gradient is not bounded by its own clipping; use "
                             "model.norm = instance or none")
        poison = self.attacks.poisoning
        if poison.enabled and poison.kind == "alie" and fed.runtime != "inprocess":
            raise ValueError(f"attacks.poisoning.kind = 'alie' needs every center's update "
                             f"at the attacker, which only federation.runtime = 'inprocess' "
                             f"simulates (got {fed.runtime!r})")
        if poison.enabled:
            bad = [c for c in poison.malicious_centers if not 0 <= c < n]
            if bad or len(set(poison.malicious_centers)) != len(poison.malicious_centers):
                raise ValueError(f"attacks.poisoning.malicious_centers = "
                                 f"{poison.malicious_centers}: each must be a distinct center "
                                 f"index in 0…{n - 1}")
            if len(poison.malicious_centers) >= n:
                raise ValueError(f"attacks.poisoning.malicious_centers = "
                                 f"{poison.malicious_centers} leaves no honest center; at most "
                                 f"{n - 1} of {n} may be malicious")
        if self.attacks.membership.enabled:
            if fed.server_view_rounds == "none":
                raise ValueError("attacks.membership.enabled needs a server view: set "
                                 "federation.server_view_rounds to all, last or a list")
            if n < 2:
                raise ValueError("attacks.membership needs data.centers ≥ 2: the other "
                                 "centers are FedMIA's non-member references")
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
        if isinstance(fed.server_view_rounds, list):
            bad = [r for r in fed.server_view_rounds if not 1 <= r <= fed.rounds]
            if bad:
                raise ValueError(
                    f"federation.server_view_rounds = {fed.server_view_rounds}: rounds {bad} "
                    f"are outside 1…{fed.rounds}"
                )
        return self

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
    """Stable hash of everything that changes a run's result (the label ``name`` excluded).

    Only values that differ from the defaults count, so a new config key (added with a
    default that keeps the old behaviour) does not make every earlier run look different.
    """
    data = cfg.model_dump(exclude_defaults=True)
    data.pop("name", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """An invalid experiment config; the message lists every bad key, value and rule."""


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check the spelling; see `fedsct presets`)")
        elif key and e["type"] != "value_error":
            lines.append(f"{key} = {e.get('input')!r} is not allowed: {msg}")
        else:
            lines.append(msg)
    return "invalid experiment config:\n  " + "\n  ".join(lines)


def validate_config(data: dict[str, Any]) -> ExperimentConfig:
    """Dict → :class:`ExperimentConfig`, or :class:`ConfigError` naming every bad key."""
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


def parse_set(expr: str) -> dict[str, Any]:
    """``"federation.rounds=5"`` → ``{"federation": {"rounds": 5}}`` (value parsed as YAML)."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected KEY.PATH=VALUE, e.g. federation.rounds=5")
    key, raw = expr.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {expr!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {expr!r}: value is not valid YAML ({err})") from None
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON config file into a dict, with a clear error on bad syntax."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {p.name!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p.name!r} must hold a mapping of keys, not {type(data)}")
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
