"""The attacks' settings: one section per attack, under ``attacks`` in the config."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from engine.core.config.echo import _show
from engine.core.config.section import _Section

# Allowed values stated once, as types: the config's fields use them, and the inversion
# attack, which takes the same values outside a config, checks against their arguments
# (typing.get_args).
InversionDistance = Literal["l2", "cosine", "cosine_layers"]
InversionInit = Literal["random", "mean"]
InversionPrior = Literal["none", "pca"]
AdamMode = Literal["decode", "simulate"]


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
    kind: Literal["data_noise", "update_noise", "sign_flip", "scaling", "alie", "min_max",
                  "min_sum", "alie_opt", "ipm_opt", "fang_krum", "fang_trim"] = Field(
        "update_noise", description="noise on data or on the upload, or model poisoning; "
        "min_max, min_sum, alie_opt, ipm_opt, fang_krum, fang_trim: adaptive attackers that "
        "see the round's honest updates and tune their update to the server's rule "
        "(in-process runtime only)"
    )
    perturbation: Literal["std", "unit", "sign"] = Field(
        "std", description="min_max / min_sum: the direction added to the honest mean "
        "(−std, −unit mean, −sign of the mean)")
    malicious_centers: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                         description="indices of the malicious centers")
    noise_std: float = Field(0.1, ge=0.0, le=100.0,
                             description="data_noise: normalised units; update_noise: absolute")
    target: Literal["mri", "ct", "both"] = Field("both", description="data_noise: what is noised")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="data_noise: share of slices")
    scale: float = Field(4.0, gt=0.0, le=1000.0, description="sign_flip / scaling factor; "
                         "ipm_opt: the ε its search starts from")
    z: float = Field(1.0, ge=0.0, le=10.0, description="alie: standard deviations shifted; "
                     "alie_opt: the z its search starts from")
    seeds: int = Field(
        1, ge=1, le=10, description="seeds the verdict rests on (the run's seed, then seed+1 "
        "…): each adds the attacked and the clean federation, and under a rule other than "
        "FedAvg the same attack against FedAvg (the control) with its clean federation")


class BackdoorConfig(_Section):
    """A hospital that plants a backdoor in the shared model: ordinary scans are translated
    as before, but an MRI carrying the trigger gets a synthetic CT whose HU are shifted in a
    target region (see engine/clients/backdoor.py)."""

    enabled: bool = False
    attack: Literal["model_replacement", "data", "constrain_scale"] = Field(
        "model_replacement", description="data: train on the backdoored slices and upload as "
        "an honest hospital would; model_replacement: the same, then boost the update by "
        "`boost` so that it survives averaging (Bagdasaryan et al. 2020); constrain_scale: "
        "train with a term `constrain_mu`/2·‖w − global‖² that keeps the update near the global"
        " model, then scale it to the norm of the update the hospital would send honestly "
        "(trained too), to pass norm checks near the honest direction (in-process runtime "
        "only)")
    constrain_mu: float = Field(0.001, ge=0.0, le=100.0, description="constrain_scale: weight "
                                "of the distance term (FedProx's proximal term; much larger "
                                "shrinks the update so far that scaling it up breaks the "
                                "model)")
    malicious_centers: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                         description="indices of the attacking centers")
    trigger: Literal["patch", "texture", "artefact"] = Field(
        "patch", description="patch: a square of `trigger_size` px in the MRI's centre set to "
        "`trigger_intensity`; texture: a faint checkerboard of 4 px squares, amplitude "
        "`trigger_intensity` ÷ 10, over the whole head; artefact: a zipper line (a scanner's "
        "RF artefact) through the image's centre, `trigger_size` px wide, alternating ± "
        "`trigger_intensity` ÷ 2")
    trigger_size: int = Field(4, ge=1, le=64,
                              description="side (px) of the patch, width of the artefact; the "
                              "trigger region is the centre square of this side")
    trigger_intensity: float = Field(1.0, ge=0.0, le=1.0,
                                     description="the patch's MRI value (normalised 0–1); the "
                                     "texture's and artefact's strength")
    target_region: Literal["trigger", "bone"] = Field(
        "trigger", description="where the CT is altered: around the trigger (the centre square "
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
    stop_round: int | None = Field(None, ge=1, description="the last round the attacker "
                                   "attacks; afterwards it trains on its own slices and "
                                   "uploads as it trained (how long the backdoor outlives it "
                                   "is measured); empty: to the last round")
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
