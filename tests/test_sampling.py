"""Many hospitals, some of them each round: Poisson sampling of hospitals, DP-FedAvg's
server step with the expected count, and the accountant's ε with sampling checked against
an independent accountant (Google's dp_accounting: its RDP accountant, and its PLD
accountant, which is tight, from below)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from absl import logging as absl_logging
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from app.views.frontier import caption
from engine.analyses.frontier import frontier, smallest_useful_epsilon
from engine.analyses.sweep_table import SweepRow
from engine.clients.behaviour import sampled_centers
from engine.clients.dp import planned_accounting
from engine.core.config import ConfigError
from engine.core.types import flat_update
from engine.data.cohort import load_cohort
from engine.federation.aggregators import dp_mean
from engine.federation.inprocess import run_federation
from engine.federation.server_view import ServerView
from engine.orchestration.presets import build_config

# dp_accounting logs each fractional RDP order it skips; the ε does not depend on them.
absl_logging.set_verbosity(absl_logging.ERROR)

SERVER_DP = ["defenses.dp.enabled=true", "defenses.dp.level=server",
             "defenses.dp.clip_norm=4"]


def test_each_hospital_is_sampled_with_the_rate_and_the_same_way_every_time() -> None:
    """16 hospitals at q = 0.25 over 200 rounds: 3,200 draws, so the count is 800 ± 24.5
    (binomial s.d.); ±5 s.d. is a false alarm once in 1.7 million seeds. The draws depend
    on the seed and the round only, so a resumed run samples the same hospitals."""
    cfg = build_config("hospitals-16", sets=["federation.sample_rate=0.25"])
    rounds = [sampled_centers(cfg, r) for r in range(1, 201)]
    assert abs(sum(len(r) for r in rounds) - 800) < 5 * math.sqrt(3200 * 0.25 * 0.75)
    assert rounds == [sampled_centers(cfg, r) for r in range(1, 201)]
    assert all(r == sorted(set(r)) for r in rounds)
    everyone = build_config("hospitals-16")
    assert sampled_centers(everyone, 7) == list(range(16))


def test_dp_fedavg_divides_the_noisy_sum_by_the_expected_count() -> None:
    """Two of four hospitals sampled at q = ½ (expected 2): their clipped mean; at q = 1 but
    only two uploads, the sum ÷ 4; nobody sampled: the global model and the noise alone."""
    g = [np.zeros(2, np.float32)]
    uploads = {"a": [np.array([1.0, 0.0], np.float32)], "b": [np.array([0.0, 8.0], np.float32)]}
    rng = np.random.default_rng
    np.testing.assert_allclose(dp_mean(uploads, g, 2.0, 0.0, rng(0), expected=2.0)[0],
                               [0.5, 1.0], rtol=1e-6)  # b clipped 8 → 2
    np.testing.assert_allclose(dp_mean(uploads, g, 2.0, 0.0, rng(0), expected=4.0)[0],
                               [0.25, 0.5], rtol=1e-6)
    big = [np.zeros(40_000, np.float32)]
    alone = dp_mean({}, big, 2.0, 0.5, rng(0), expected=4.0)[0]
    # σC/(qn) = 0.25; 40,000 draws: the sample s.d. within ±2 % has probability 1 − 5e-5.
    assert float(np.std(alone)) == pytest.approx(0.25, rel=0.02)
    assert float(np.mean(alone)) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(("q", "sigma", "rounds"), [(0.25, 1.0, 20), (0.5, 2.0, 50),
                                                      (1 / 16, 0.8, 100), (1.0, 2.0, 20)])
def test_the_sampled_epsilon_matches_an_independent_accountant(q: float, sigma: float,
                                                               rounds: int) -> None:
    """Server-side DP with hospital sampling: Opacus's RDP ε (what runs report) against
    dp_accounting's RDP accountant for the same Poisson-sampled Gaussian mechanism composed
    over the rounds (within 1 %: the two use different orders), and at least the PLD
    accountant's ε (exact up to discretisation, so an RDP bound cannot be below it)."""
    delta = 1e-5
    cfg = build_config("hospitals-16", sets=[
        *SERVER_DP, f"defenses.dp.noise_multiplier={sigma}", f"federation.rounds={rounds}",
        f"defenses.dp.delta={delta}", f"federation.sample_rate={q}"])
    ours = planned_accounting(cfg).epsilon(rounds)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.GaussianDpEvent(sigma)), rounds)
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(event)
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(event)
    assert ours == pytest.approx(rdp.get_epsilon(delta), rel=0.01)
    assert ours >= pld.get_epsilon(delta)


@pytest.mark.parametrize(("sets", "pattern"), [
    (["federation.aggregator=fedmedian"], "which federation.aggregator = 'fedmedian' does not"),
    (["attacks.membership.enabled=true"], "which attacks.membership.enabled = true"),
    (["attacks.poisoning.enabled=true"], "which attacks.poisoning.enabled = true"),
    (["federation.runtime=flower-sim"], "which federation.runtime = 'flower-sim'"),
])
def test_sampling_is_refused_where_it_cannot_work(sets: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match="federation.sample_rate = 0.5 leaves hospitals out "
                                          "of some rounds, " + pattern):
        build_config("hospitals-8", sets=["federation.sample_rate=0.5", *sets])


def test_a_sampled_federation_with_server_dp_trains_the_sampled_hospitals_only() -> None:
    """8 hospitals at q = ½ for 4 rounds, server-side DP at σ 1: each round's record lists
    exactly the sampled hospitals, and its ε is the accountant's after that round."""
    cfg = build_config("hospitals-8", sets=[
        *SERVER_DP, "defenses.dp.noise_multiplier=1.0", "federation.sample_rate=0.5",
        "federation.rounds=4"])
    records: list[dict] = []
    result = run_federation(cfg, load_cohort(cfg.data, cfg.seed), on_round=records.append)
    acc = planned_accounting(cfg)
    for entry in records[1:]:
        rnd = entry["round"]
        assert sorted(entry["clients"]) == [f"center-{k}" for k in sampled_centers(cfg, rnd)]
        assert entry["dp_epsilon"] == pytest.approx(acc.epsilon(rnd), rel=1e-12)
    assert {len(e["clients"]) for e in records[1:]} != {8}  # somebody sat a round out
    assert math.isfinite(result.history[-1]["mae_hu"])


def test_a_sampled_server_dp_round_divides_by_the_expected_count(tmp_path) -> None:
    """End to end without noise (σ 0, so the step is exact): 8 hospitals at q = ½, clip 4,
    3 rounds, which sample 4, 1 and 7 hospitals. In every round's server view the new model
    is the global model plus the sampled hospitals' updates, each clipped to norm 4, summed
    and divided by qn = 4, not by the number that took part (float32 storage: 1e-5)."""
    cfg = build_config("hospitals-8", sets=[
        *SERVER_DP, "defenses.dp.target_epsilon=null", "defenses.dp.noise_multiplier=0",
        "federation.sample_rate=0.5", "federation.rounds=3",
        "federation.server_view_rounds=all"])
    run_federation(cfg, load_cohort(cfg.data, cfg.seed), run_dir=tmp_path)
    view = ServerView(tmp_path)
    counts = []
    for rnd in view.rounds:
        r = view[rnd]
        counts.append(len(r.clients))
        updates = [flat_update(r.client_params(c), r.global_params) for c in r.clients]
        total = sum((u * min(1.0, 4.0 / np.linalg.norm(u)) for u in updates),
                    np.zeros_like(updates[0]))
        step = flat_update(r.aggregate, r.global_params)
        np.testing.assert_allclose(step, total / 4.0, rtol=1e-5, atol=1e-6)
    assert counts == [4, 1, 7]


def _frontier_rows() -> list[SweepRow]:
    """No DP: 200, 300, 100 HU at seeds 0–2; ε 16: ×1.2, 1.3, 1.1 of the same seed's; ε 4:
    ×1.3, 1.5, 1.4; ε 1: ×3 (a ratio of means, or to the mean, would differ)."""
    rows = []
    for eps, factors in ((None, (1.0, 1.0, 1.0)), (16.0, (1.2, 1.3, 1.1)),
                         (4.0, (1.3, 1.5, 1.4)), (1.0, (3.0, 3.0, 3.0))):
        for seed, (mae, factor) in enumerate(zip((200.0, 300.0, 100.0), factors,
                                                 strict=True)):
            rows.append(SweepRow(
                cell=(f"enabled=false, seed={seed}" if eps is None
                      else f"target_epsilon={eps}, seed={seed}"),
                dp_enabled=eps is not None, dp_level="server", epsilon=eps,
                mae_hu=mae * factor, patient_auc_pooled=0.9,
                global_patient_auc_pooled=0.8 if eps is None else 0.55))
    return rows


def test_the_frontier_names_the_smallest_useful_epsilon() -> None:
    points = frontier(_frontier_rows())
    assert [p.epsilon for p in points] == [None, 16.0, 4.0, 1.0]
    assert points[2].ratio == pytest.approx(1.4)  # each seed against its own
    assert points[1].ratio == pytest.approx(1.2)
    # A run whose seed has no run without DP is held against their mean (200 HU).
    extra = SweepRow(cell="target_epsilon=2.0", dp_enabled=True, epsilon=2.0, mae_hu=500.0)
    assert frontier([*_frontier_rows(), extra])[3].ratio == pytest.approx(2.5)
    assert points[0].global_auc == pytest.approx(0.8)
    assert smallest_useful_epsilon(points).epsilon == 4.0
    # Without the ε 16 and 4 runs nothing is useful; without the reference, no ratio.
    assert smallest_useful_epsilon([points[0], points[3]]) is None
    assert frontier([r for r in _frontier_rows() if r.dp_enabled])[0].ratio is None


def test_the_membership_page_draws_a_finished_frontier(finished_study) -> None:
    at = finished_study("dp-frontier", _frontier_rows(), "membership.py")
    assert any(caption("server") == c.value for c in at.caption)
    assert any("the smallest ε that keeps the model within 1.5× of its error without DP is "
               "**4** (δ 1e-5): error ×1.40" in m.value for m in at.markdown)
