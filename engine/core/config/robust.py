"""The robust rules' own limits: how many attackers each is built for, what a federation
needs for that many, and which attackers a rule can be measured against; and the one name of
a rule with its pre-aggregator (:func:`rule_key`) that tables, pages and reports use.

Plain functions of an :class:`~engine.core.config.schema.ExperimentConfig` (the schema's
cross-checks call them); the breakdown studies' cells stay within :func:`breakdown_limit`
(tests/test_preaggregation.py checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.core.config.schema import ExperimentConfig, FederationConfig


def breakdown_limit(fed: FederationConfig, n: int) -> tuple[int, str] | None:
    """The most attackers ``fed``'s rule (and pre-aggregator) withstands with ``n``
    hospitals, with the condition in words (Krum n ≥ 2f+3, Bulyan n ≥ 4f+3, the median,
    centred clipping, DnC, NNM and ARC f < n/2, the trimmed mean f ≤ β·n); None for plain
    averaging, which withstands none (a pre-aggregator in front of a mean does not make it
    robust)."""
    half = ((n - 1) // 2, "f < n/2")
    rule = {"krum": ((n - 3) // 2, "n ≥ 2f+3"), "multikrum": ((n - 3) // 2, "n ≥ 2f+3"),
            "bulyan": ((n - 3) // 4, "n ≥ 4f+3"), "fedmedian": half,
            "centered_clipping": half, "dnc": half,
            "trimmed_mean": (int(fed.trim_beta * n), "f ≤ β·n")}.get(fed.aggregator)
    if rule is None:
        return None
    return min(rule, half, key=lambda x: x[0]) if fed.pre_aggregator != "none" else rule


# The settings that tell the server how many attackers to expect (it keeps or mixes
# around that many).
TOLD_F = ("krum", "multikrum", "bulyan", "dnc")


def check_robust_rules(cfg: ExperimentConfig) -> None:
    """Each robust aggregator's and pre-aggregator's minimum number of centers for
    ``federation.num_malicious`` = f."""
    fed, n = cfg.federation, cfg.data.centers
    f = fed.num_malicious
    if fed.aggregator in ("krum", "multikrum") and not n > 2 * f + 2:
        raise ValueError(
            f"federation.aggregator = {fed.aggregator!r} with federation.num_malicious = {f} "
            f"needs data.centers > 2f+2 = {2 * f + 2}, got {n}")
    if fed.aggregator == "multikrum" and fed.multikrum_m > n - f:
        raise ValueError(
            f"federation.multikrum_m = {fed.multikrum_m} must be ≤ centers − f = {n - f}")
    if fed.aggregator == "bulyan" and not n >= 4 * f + 3:
        raise ValueError(
            f"federation.aggregator = 'bulyan' with federation.num_malicious = {f} needs "
            f"data.centers ≥ 4f+3 = {4 * f + 3}, got {n}")
    if fed.aggregator == "fedmedian" and n < 3:
        raise ValueError(
            f"federation.aggregator = 'fedmedian' needs data.centers ≥ 3 to outvote one "
            f"center, got {n}")
    if fed.aggregator == "trimmed_mean" and int(fed.trim_beta * n) < 1:
        raise ValueError(
            f"federation.trim_beta = {fed.trim_beta} trims nothing with {n} centers "
            f"(β·n < 1); use β ≥ {1 / n:.2f} or more centers")
    for setting, on in ((f"federation.aggregator = {fed.aggregator!r}", fed.aggregator == "dnc"),
                        (f"federation.pre_aggregator = {fed.pre_aggregator!r}",
                         fed.pre_aggregator != "none")):
        if on and not n > 2 * f:
            raise ValueError(
                f"{setting} with federation.num_malicious = {f} needs a majority of honest "
                f"centers, data.centers > 2f = {2 * f}, got {n}; lower "
                "federation.num_malicious or add centers")


def check_adaptive_rules(cfg: ExperimentConfig, f: int) -> None:
    """An adaptive attacker tunes its update to the aggregation rule: one of the rules it
    models, with no more attackers than the rule is built to withstand (its breakdown
    point); beyond it the rule promises nothing and the cell would measure nothing about
    it."""
    d, fed, n = cfg.defenses, cfg.federation, cfg.data.centers
    kind = cfg.attacks.poisoning.kind
    for setting, on in (("defenses.flame = true", d.flame),
                        ("defenses.fltrust = true", d.fltrust),
                        (f"defenses.dp.level = {d.dp.level!r}", d.dp.enabled),
                        (f"defenses.prune_fraction = {d.prune_fraction:g}",
                         d.prune_fraction > 0),
                        ("defenses.secure_aggregation = true", d.secure_aggregation)):
        if on:
            raise ValueError(f"attacks.poisoning.kind = {kind!r} tunes its update to the "
                             f"honest updates and the aggregation rule, and {setting} is "
                             "not one it models; use federation.aggregator, "
                             "federation.pre_aggregator and defenses.update_clip instead")
    limit = breakdown_limit(fed, n)
    if limit is not None and f > limit[0]:
        rule = (f"federation.aggregator = {fed.aggregator!r}" if fed.pre_aggregator == "none"
                else f"federation.aggregator = {fed.aggregator!r} after "
                     f"federation.pre_aggregator = {fed.pre_aggregator!r}")
        raise ValueError(
            f"{f} attackers are beyond what {rule} withstands with data.centers = {n} "
            f"({limit[1]}: at most {limit[0]}); use fewer "
            "attacks.poisoning.malicious_centers or more centers")
    if (fed.aggregator in TOLD_F or fed.pre_aggregator != "none") and f > fed.num_malicious:
        raise ValueError(
            f"{f} attackers against a server told federation.num_malicious = "
            f"{fed.num_malicious} ({fed.aggregator}"
            + (f" after {fed.pre_aggregator}" if fed.pre_aggregator != "none" else "")
            + "): the rule is built for that many; set federation.num_malicious to the "
            "number of attackers")


# Each rule's name in words, as pages and reports show it.
RULE_NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedmedian": "FedMedian",
              "trimmed_mean": "Trimmed mean", "krum": "Krum", "multikrum": "Multi-Krum",
              "bulyan": "Bulyan", "centered_clipping": "Centred clipping", "dnc": "DnC",
              "nnm": "NNM", "arc": "ARC"}


def rule_key(aggregator: str, pre_aggregator: str | None = None) -> str:
    """One name for the server's rule with its pre-aggregator: ``nnm+fedmedian``, or the
    aggregator alone (``pre_aggregator`` none or unknown)."""
    return (aggregator if pre_aggregator in (None, "none")
            else f"{pre_aggregator}+{aggregator}")


def rule_aggregator(key: str) -> str:
    """The aggregator of a :func:`rule_key` (``fedmedian`` of ``nnm+fedmedian``)."""
    return key.rsplit("+", 1)[-1]


def rule_words(key: str) -> str:
    """A :func:`rule_key` in words: ``NNM + FedMedian``."""
    return " + ".join(RULE_NAMES.get(k, k) for k in key.split("+"))
