"""Adaptive attackers (Min-Max, Min-Sum, ALIE and IPM tuned to the rule, Fang's): their constraints,
their damage against the fixed attacks of the same strength on cases where the answer is
known, the rules they are refused against, and a federation that runs them.

Rules are the server's own (Flower's functions behind engine.federation.aggregators); the
random honest updates are drawn from fixed seeds, so every figure is exact up to float
rounding and compared with tolerances of 1e-9 relative."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.views.breakdown import CAPTION, VERDICT_WORDS
from engine.analyses.breakdown import breakdown, worst_cases
from engine.analyses.sweep_table import SweepRow
from engine.clients import malicious
from engine.clients.adaptive import (
    _adaptive_update,
    adaptive_update,
    fang_krum_bound,
    line_maximize,
    min_max_gamma,
    min_sum_gamma,
    perturbation,
    rule_damage,
)
from engine.core.config import ConfigError
from engine.data.cohort import load_cohort
from engine.federation.aggregators import (
    Bulyan,
    FedAvg,
    FedMedian,
    Krum,
    TrimmedMean,
    update_rule,
)
from engine.federation.inprocess import run_federation
from engine.orchestration.presets import build_config

RULES = {"fedavg": FedAvg(), "fedmedian": FedMedian(), "trimmed_mean": TrimmedMean(beta=0.2),
         "krum": Krum(num_malicious=2), "bulyan": Bulyan(num_malicious=2)}


def _honest(n: int = 9, d: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 1.0, (n, d))


@pytest.mark.parametrize("kind", ["std", "unit", "sign"])
def test_min_max_and_min_sum_gammas_are_the_largest_that_keep_their_constraint(
        kind: str) -> None:
    honest = _honest()
    p = perturbation(honest, kind)
    mean = honest.mean(axis=0)
    pair = np.sqrt(((honest[:, None] - honest[None]) ** 2).sum(-1))

    def farthest(g: float) -> float:
        return float(np.linalg.norm(mean + g * p - honest, axis=1).max())

    gamma = min_max_gamma(honest, p)
    assert gamma > 0 and farthest(gamma) <= pair.max() * (1 + 1e-12)
    assert farthest(gamma * (1 + 1e-6)) > pair.max()  # tight: a little more breaks it

    def total(g: float) -> float:
        return float(((mean + g * p - honest) ** 2).sum())

    gamma = min_sum_gamma(honest, p)
    bound = float((pair ** 2).sum(axis=1).max())
    assert gamma > 0 and total(gamma) <= bound * (1 + 1e-12)
    assert total(gamma * (1 + 1e-6)) > bound


def test_optimised_alie_finds_the_known_worst_case_of_the_median() -> None:
    """Five honest values −2…2 (one coordinate) and two attackers under the coordinate-wise
    median: any malicious value ≤ −1 makes the median of the seven −1, the most damage there
    is (1). ALIE's fixed z = 0.5 sends −0.71 (damage 0.71); the optimised z reaches 1."""
    honest = np.array([[-2.0], [-1.0], [0.0], [1.0], [2.0]])
    rule = update_rule(FedMedian(), "none", "none", 0)
    fixed = rule_damage(rule, honest, honest.mean(0) - 0.5 * honest.std(0), 2)
    assert fixed == pytest.approx(0.5 * math.sqrt(2), rel=1e-9)
    update, z = adaptive_update("alie_opt", honest, rule, 2, start=0.5)
    assert rule_damage(rule, honest, update, 2) == pytest.approx(1.0, rel=1e-9)
    assert z >= 1 / math.sqrt(2)


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize(("kind", "start"), [("alie_opt", 1.0), ("ipm_opt", 4.0)])
def test_an_optimised_attack_does_at_least_the_fixed_attacks_damage(rule_name: str, kind: str,
                                                                    start: float) -> None:
    """Nine honest updates, two attackers: ALIE (z = 1) and IPM (ε = 4) with their factor
    searched do at least the fixed factor's damage to every rule (in the measure the search
    maximises). Each rule gets its own update, not one cached for another rule."""
    honest = _honest()
    rule = update_rule(RULES[rule_name], "none", "none", 0)
    mean, std = honest.mean(0), honest.std(0)
    fixed = mean - start * std if kind == "alie_opt" else -start * mean
    update, _ = adaptive_update(kind, honest, rule, 2, start=start)
    assert rule_damage(rule, honest, update, 2) >= rule_damage(rule, honest, fixed, 2) - 1e-12
    fresh = _adaptive_update(kind, honest, rule, 2, "std", start)[0]
    np.testing.assert_array_equal(update, fresh)


def test_the_search_beats_the_fixed_factor_where_it_can() -> None:
    """Against FedAvg the damage grows with IPM's ε, so the search goes to its top; against
    Krum a large ALIE shift is thrown out, so the best z is smaller than a large fixed one."""
    honest = _honest()
    fedavg = update_rule(FedAvg(), "none", "none", 0)
    _, eps = adaptive_update("ipm_opt", honest, fedavg, 2, start=4.0)
    assert eps == pytest.approx(100.0, rel=1e-9)
    krum = update_rule(Krum(num_malicious=2), "none", "none", 0)
    update, z = adaptive_update("alie_opt", honest, krum, 2, start=5.0)
    mean, std = honest.mean(0), honest.std(0)
    assert z < 5.0
    assert rule_damage(krum, honest, update, 2) > rule_damage(krum, honest, mean - 5 * std, 2)


def test_fangs_krum_attack_is_the_update_krum_keeps() -> None:
    """Nine honest updates, two attackers sending −λ·sign(mean): the λ found is the paper's
    (the bound halved until Krum, told f = 2, picks the attackers' update, worked out here
    one halving at a time), the aggregate is that update, and it does more damage than the
    fixed sign flip (−4 × mean)."""
    honest = _honest()
    krum = update_rule(Krum(num_malicious=2), "none", "none", 0)
    update, lam = adaptive_update("fang_krum", honest, krum, 2)
    direction = -np.sign(honest.mean(0))
    paper = fang_krum_bound(honest, 2)
    while not np.allclose(krum([*honest, *[paper * direction] * 2]), paper * direction,
                          rtol=1e-12):
        paper /= 2.0
    assert lam == paper
    np.testing.assert_allclose(krum([*honest, update, update]), update, rtol=1e-12)
    assert update == pytest.approx(lam * direction, rel=1e-12)
    assert rule_damage(krum, honest, update, 2) > rule_damage(krum, honest,
                                                              -4.0 * honest.mean(0), 2)


def test_fangs_trimmed_mean_attack_on_a_case_with_a_known_answer() -> None:
    """One coordinate, honest updates 1…5 (mean 3, moving up), two attackers, the trimmed
    mean cutting two of the seven per side: the most any attackers can do is leave the
    three lowest honest values, mean 2 (damage 1), which every value ≤ 1 does. Fang's
    values lie in [min/2, min] = [0.5, 1]: damage 1; ALIE (z 1, a = 3 − √2 ≈ 1.59) leaves
    (1.59 + 2 + 3)/3, damage 0.80."""
    honest = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    rule = update_rule(TrimmedMean(beta=0.3), "none", "none", 0)
    update, b = adaptive_update("fang_trim", honest, rule, 2)
    assert b == 2.0 and 0.5 <= update[0] <= 1.0
    assert rule_damage(rule, honest, update, 2) == pytest.approx(1.0, rel=1e-12)
    alie = honest.mean(0) - honest.std(0)
    assert rule_damage(rule, honest, alie, 2) == pytest.approx(
        3.0 - (3.0 - math.sqrt(2.0) + 5.0) / 3.0, rel=1e-12)


def test_fangs_trimmed_mean_attack_goes_beyond_the_honest_extremes() -> None:
    """Every coordinate of the update lies beyond the honest extreme opposite to the honest
    mean's sign, by at most the factor b = 2 (the paper's ranges), and the draws repeat for
    the same honest updates."""
    honest = _honest()
    rule = update_rule(TrimmedMean(beta=0.2), "none", "none", 0)
    update, _ = adaptive_update("fang_trim", honest, rule, 2)
    mean, top, low = honest.mean(0), honest.max(0), honest.min(0)
    up, down = mean < 0, mean > 0
    assert np.all(update[up] >= top[up]) and np.all(update[down] <= low[down])
    far_top = np.where(top > 0, 2 * top, top / 2)
    far_low = np.where(low > 0, low / 2, 2 * low)
    assert np.all(update[up] <= far_top[up]) and np.all(update[down] >= far_low[down])
    again = _adaptive_update("fang_trim", honest, rule, 2, "std", 1.0)[0]
    np.testing.assert_array_equal(update, again)


def test_line_maximize_finds_a_peak_between_its_grid_points() -> None:
    """The peak lies between two points of the geometric scan (3.48 and 5.62, ×1.62 apart):
    the golden-section steps find it to the search's resolution (0.618²⁰ of the bracket)."""
    peak = 3.7
    x = line_maximize(lambda v: -(v - peak) ** 2, start=1.0)
    assert x == pytest.approx(peak, rel=1e-3)


@pytest.mark.parametrize(("sets", "pattern"), [
    (["data.centers=8", "federation.aggregator=krum", "federation.num_malicious=2",
      "attacks.poisoning.malicious_centers=[0,1,2]"],
     "3 attackers are beyond what federation.aggregator = 'krum' withstands with "
     "data.centers = 8 \\(n ≥ 2f\\+3: at most 2\\)"),
    (["federation.aggregator=fedmedian", "attacks.poisoning.malicious_centers=[0,1]"],
     "f < n/2: at most 1"),
    (["defenses.flame=true"], "defenses.flame = true is not one it models"),
    (["defenses.dp.enabled=true"], "defenses.dp.level = 'client' is not one it models"),
    (["data.centers=8", "federation.aggregator=krum", "federation.num_malicious=1",
      "attacks.poisoning.malicious_centers=[0,1]"],
     "2 attackers against a server told federation.num_malicious = 1 \\(krum\\)"),
    (["data.centers=8", "federation.aggregator=dnc", "federation.num_malicious=3",
      "attacks.poisoning.malicious_centers=[0,1,2,3]"],
     "4 attackers are beyond what federation.aggregator = 'dnc' withstands with "
     "data.centers = 8 \\(f < n/2: at most 3\\)"),
    (["data.centers=8", "federation.aggregator=trimmed_mean", "federation.pre_aggregator=nnm",
      "federation.num_malicious=1", "attacks.poisoning.malicious_centers=[0,1]"],
     "2 attackers against a server told federation.num_malicious = 1 \\(trimmed_mean "
     "after nnm\\)"),
    (["federation.runtime=flower-sim"], "only federation.runtime = 'inprocess'"),
])
def test_an_adaptive_attack_beyond_the_rules_limit_is_refused(sets: list[str],
                                                              pattern: str) -> None:
    base = ["attacks.poisoning.enabled=true", "attacks.poisoning.kind=min_max"]
    with pytest.raises(ConfigError, match=pattern):
        build_config("poison-base", sets=[*base, *sets])


@pytest.mark.parametrize("kind", ["min_max", "alie_opt", "fang_trim"])
def test_a_federation_trains_with_an_adaptive_attacker(kind: str, monkeypatch) -> None:
    """Through the in-process runtime (3 rounds of poison-base under FedMedian): every
    round the attacker's upload, as the server sees it, is the update the attack tuned
    that round (its norm, up to the float32 upload's rounding), not the model it trained,
    and the run finishes with a finite error."""
    tuned: list[float] = []

    def spy(*args, **kwargs):
        update, factor = adaptive_update(*args, **kwargs)
        tuned.append(float(np.linalg.norm(update)))
        return update, factor

    monkeypatch.setattr(malicious, "adaptive_update", spy)
    cfg = build_config("poison-base", sets=[
        "attacks.poisoning.enabled=true", f"attacks.poisoning.kind={kind}",
        "federation.aggregator=fedmedian", "federation.rounds=3"])
    result = run_federation(cfg, load_cohort(cfg.data, cfg.seed))
    assert math.isfinite(result.history[-1]["mae_hu"])
    norms = [r["clients"]["center-0"]["update_norm"] for r in result.detection]
    assert len(tuned) == 3
    np.testing.assert_allclose(norms, tuned, rtol=1e-4)


def _row(rule: str, f: int, kind: str, ratio: float, seed: int = 0,
         pre: str | None = None) -> SweepRow:
    return SweepRow(cell=f"aggregator={rule}, kind={kind}, seed={seed}", aggregator=rule,
                    pre_aggregator=pre, poison_kind=kind,
                    malicious=" ".join(f"center-{k}" for k in range(f)), mae_ratio=ratio)


def _rows() -> list[SweepRow]:
    """FedAvg breaks under every attack; the median holds one attacker's strongest attack
    (Min-Max, 1.1×) and is damaged by two; Krum's strongest attack also leaves FedAvg
    unhurt at one seed, so nothing can be said of it; the trimmed mean's strongest attack
    (IPM, 1.2×) did not hurt FedAvg at every seed either, but Min-Max, which it also
    stopped, did: it holds. Bulyan's one attack averages 1.17× but its seeds range from
    0.9 to 1.5: inconclusive. NNM before the median is a rule of its own: it holds where
    the median alone is damaged."""
    table = {("fedavg", 1): {"alie": (1.6, 1.5, 1.7), "min_max": (2.5, 2.2, 2.8)},
             ("fedavg", 2): {"alie": (1.9, 2.1, 2.0), "min_max": (3.0, 3.2, 2.9)},
             ("fedmedian", 1): {"alie": (1.0, 1.05, 1.02), "min_max": (1.1, 1.12, 1.08)},
             ("fedmedian", 2): {"alie": (1.2, 1.3, 1.25), "min_max": (1.5, 1.45, 1.55)},
             ("krum", 1): {"ipm_opt": (1.1, 1.0, 1.05)},
             ("trimmed_mean", 1): {"ipm_opt": (1.2, 1.2, 1.2), "min_max": (1.0, 1.0, 1.0)},
             ("bulyan", 1): {"alie": (0.9, 1.1, 1.5)},
             ("fedavg", 1, "ipm"): {"ipm_opt": (1.4, 1.2, 1.5)}}
    rows = []
    for key, kinds in table.items():
        for kind, ratios in kinds.items():
            rows += [_row(key[0], key[1], kind, r, s) for s, r in enumerate(ratios)]
    return rows + [_row("fedmedian", 2, "min_max", r, s, pre="nnm")
                   for s, r in enumerate((1.0, 1.05, 1.02))]


def test_breakdown_takes_the_strongest_attack_per_rule_and_attackers() -> None:
    cells = {(c.rule, c.attackers): c for c in breakdown(_rows())}
    assert [k for k in cells] == [("fedavg", 1), ("fedavg", 2), ("fedmedian", 1),
                                  ("fedmedian", 2), ("krum", 1), ("trimmed_mean", 1),
                                  ("bulyan", 1), ("nnm+fedmedian", 2)]
    assert cells[("nnm+fedmedian", 2)].verdict == "holds"  # FedAvg's Min-Max: 2.9 at worst
    assert cells[("bulyan", 1)].verdict == "inconclusive"
    assert cells[("fedavg", 1)].strongest.kind == "min_max"
    assert cells[("fedavg", 1)].verdict == "broken"  # mean 2.5
    assert cells[("fedmedian", 1)].strongest.mean == pytest.approx(1.1)
    assert cells[("fedmedian", 1)].verdict == "holds"  # FedAvg's Min-Max: 2.2 at worst
    assert cells[("fedmedian", 2)].verdict == "damaged"  # 1.5 > 1.25
    # Krum's strongest attack, IPM, hurt FedAvg beyond 1.25 at two seeds of three only.
    assert cells[("krum", 1)].verdict == "attack_too_weak"
    trimmed = cells[("trimmed_mean", 1)]
    assert (trimmed.strongest.kind, trimmed.control.kind) == ("ipm_opt", "min_max")
    assert trimmed.verdict == "holds"
    assert cells[("fedavg", 1)].strongest.interval[0] < 2.5 < cells[
        ("fedavg", 1)].strongest.interval[1]
    worst = worst_cases(list(cells.values()))
    assert (worst["fedmedian"].attackers, worst["fedavg"].attackers) == (2, 2)


def test_the_page_draws_a_finished_breakdown_study(finished_study) -> None:
    """A finished study's folder (rows written as a sweep writes them): the curves, the
    worst-case table with each rule's verdict, and every cell."""
    at = finished_study("poison-breakdown", _rows(), "poisoning.py")
    assert any(CAPTION == c.value for c in at.caption)
    worst = next(d.value for d in at.dataframe if "Strongest attack" in d.value.columns)
    assert worst["Rule"].tolist() == ["FedAvg", "FedMedian", "Krum", "Trimmed mean",
                                      "Bulyan", "NNM + FedMedian"]
    assert worst["Verdict"].tolist() == [VERDICT_WORDS["broken"], VERDICT_WORDS["damaged"],
                                         VERDICT_WORDS["attack_too_weak"],
                                         VERDICT_WORDS["holds"], VERDICT_WORDS["inconclusive"],
                                         VERDICT_WORDS["holds"]]
    assert worst["Control (the attack that hurt FedAvg most)"].iloc[3] == (
        "Min-Max: ×2.50 (lowest seed ×2.20)")
    assert worst["Error ratio [95 % interval]"].iloc[1].startswith("×1.50 [")
