"""The privacy audit: estimators as plain functions, and canary hospitals that audit the
hospitals' own DP code in a real run."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

import engine.clients.dp
from engine.attacks.dp_audit import audit_verdict
from engine.clients.dp import DPAccounting, gradient_canaries, train_local_dp_sgd
from engine.core.audit import (
    GUESS_SHARES,
    audit_cap,
    audit_epsilon,
    clopper_pearson_epsilon,
    gaussian_delta,
    gaussian_epsilon,
    one_run_epsilon,
    one_run_p_value,
    one_shot_epsilon,
)
from engine.core.config import ConfigError
from engine.data.phantom import phantom_patient
from engine.data.types import SliceSet
from engine.learning.local import LocalTraining
from engine.learning.model import build_unet, get_parameters
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run


@pytest.mark.parametrize(("m", "expected"), [(16, 1.350), (100, 3.281), (1000, 5.601)])
def test_every_guess_right_certifies_the_randomised_response_odds(m, expected):
    """All m guesses right has probability q^m under ε-DP (δ = 0): the bound is the ε whose
    q = e^ε/(1+e^ε) makes q^m = 1 − confidence. At 97.5 % (a two-sided 95 % interval):
    16 canaries ≈ 1.35, 100 ≈ 3.28, 1,000 ≈ 5.60."""
    got = one_run_epsilon(m, m, m, 0.0, 0.975)
    q = 0.025 ** (1 / m)
    assert got == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
    assert got == pytest.approx(expected, abs=1e-3)
    # The δ term only lowers the bound; the cap adds the Bonferroni factor of the guess sets.
    assert one_run_epsilon(m, m, m, 1e-5, 0.975) <= got
    r = 2 * round(max(GUESS_SHARES) * m / 2)
    assert audit_cap(m, 0.0, 0.95) == pytest.approx(
        one_run_epsilon(m, r, r, 0.0, 1 - 0.05 / len(GUESS_SHARES)))


def test_one_run_p_value_is_the_binomial_tail_without_delta():
    assert one_run_p_value(50, 40, 30, 1.0, 0.0) == pytest.approx(
        binom.sf(29, 40, 1 / (1 + math.exp(-1.0))))
    assert one_run_p_value(50, 40, 30, 1.0, 1e-3) > one_run_p_value(50, 40, 30, 1.0, 0.0)
    assert one_run_epsilon(100, 100, 50, 0.0) == 0.0  # a coin's share right: nothing


def test_clopper_pearson_bound_of_a_perfect_threshold():
    """No error among 500 + 500: FPR ≤ 1 − 0.025^(1/500), so ε ≥ ln((1 − δ − FNR)/FPR)."""
    fpr = 1 - 0.025 ** (1 / 500)
    want = math.log((1 - 1e-5 - fpr) / fpr)
    assert clopper_pearson_epsilon(0, 500, 0, 500, 1e-5) == pytest.approx(want, rel=1e-6)
    assert clopper_pearson_epsilon(250, 500, 250, 500, 1e-5) == 0.0


def test_gaussian_mechanism_epsilon_inverts_its_delta():
    for mu in (0.5, 1.0, 3.0):
        eps = gaussian_epsilon(mu, 1e-5)
        assert gaussian_delta(eps, mu) == pytest.approx(1e-5, rel=1e-4)
    assert gaussian_epsilon(1.0, 1e-5) < gaussian_epsilon(2.0, 1e-5)


def _mechanism(mu: float, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    present = rng.random(m) < 0.5
    return rng.normal(size=m) + mu * present, present


def test_the_bound_stays_below_the_true_epsilon_at_its_confidence():
    """A Gaussian mechanism of known ε (μ = 1: ε ≈ 4.38 at δ 1e-5), 1,000 canaries, 20 seeds:
    each bound exceeds the truth with probability ≤ 5 %, so a correct implementation shows
    4 or more of 20 above it with probability 1.6 % (this test's false-alarm rate)."""
    truth = gaussian_epsilon(1.0, 1e-5)
    bounds = [audit_epsilon(*_mechanism(1.0, 1000, s), 1e-5)["epsilon_lower_bound"]
              for s in range(20)]
    assert sum(b > truth for b in bounds) <= 3
    assert np.median(bounds) > 0.3  # and the audit has power: it certifies something


def test_a_perfectly_separated_mechanism_reaches_the_cap_and_the_estimate_follows_mu():
    scores, present = _mechanism(40.0, 1000, 0)
    found = audit_epsilon(scores, present, 1e-5)
    assert found["epsilon_lower_bound"] >= 0.95 * audit_cap(1000, 1e-5)
    scores, present = _mechanism(2.0, 4000, 1)
    est = one_shot_epsilon(scores[present], scores[~present], 1e-5)
    assert est == pytest.approx(gaussian_epsilon(2.0, 1e-5), rel=0.1)


def test_verdicts():
    assert audit_verdict(9.0, 3.8, 8.0) == "violation"
    assert audit_verdict(0.1, 3.8, 8.0) == "weak_audit"  # could not reach 8, found little
    assert audit_verdict(1.7, 3.8, 8.0) == "consistent"
    assert audit_verdict(0.0, 3.8, 1.0) == "consistent"
    assert audit_verdict(3.5, 3.8, None) == "consistent"  # ε = ∞ claims nothing


_PATIENT = ("defenses.dp.level=sample", "attacks.dp_audit.kind=patient",
            "attacks.dp_audit.canaries=500", "federation.server_view_rounds=all")


def _audited(runs_dir, *sets: str) -> dict:
    cfg = build_config("smoke", sets=["defenses.dp.enabled=true", "defenses.dp.clip_norm=0.5",
                                      "attacks.dp_audit.enabled=true", *sets])
    run = create_run(cfg)
    summary = execute(run)
    assert summary is not None, (run.path / "log.txt").read_text()[-2000:]
    return summary["dp_audit"]


@pytest.mark.parametrize("sets", [(), ("defenses.secure_aggregation=true",), _PATIENT],
                         ids=["hospital", "hospital-secagg", "patient"])
def test_without_noise_the_audit_nearly_reaches_its_cap(runs_dir, sets):
    audit = _audited(runs_dir, "defenses.dp.noise_multiplier=0", *sets)
    assert audit["accountant_epsilon"] is None and audit["verdict"] == "consistent"
    assert audit["epsilon_lower_bound"] >= 0.85 * audit["cap"]
    assert audit["estimator"] == "one_run" and audit["rounds"] == 5
    assert audit["observed"] == ("aggregate" if sets[:1] == ("defenses.secure_aggregation=true",)
                                 else "uploads")


@pytest.mark.parametrize(("seed", "sets"), [(0, ()), (1, ()), (2, ()), (0, _PATIENT),
                                            (1, _PATIENT)])
def test_dp_at_epsilon_1_is_never_refuted(runs_dir, seed, sets):
    """False-alarm rate: for a mechanism that is exactly (1, δ)-DP, each cell's bound exceeds 1
    with probability ≤ 5 % (the audit's confidence, its four guess sets Bonferroni-corrected),
    so ≤ 23 % for all five cells at once (1 − 0.95⁵); the seeds are fixed, so the outcome is
    the same on every run of the suite. This implementation's bounds at ε 1 are 0–0.04
    (benchmarks/README.md), far from that worst case."""
    audit = _audited(runs_dir, "defenses.dp.target_epsilon=1", f"seed={seed}", *sets)
    assert audit["accountant_epsilon"] == pytest.approx(1.0, rel=0.02)
    assert audit["epsilon_lower_bound"] <= 1.0 and audit["verdict"] == "consistent"


@pytest.mark.parametrize("sets", [(), _PATIENT], ids=["hospital", "patient"])
def test_noise_switched_off_under_a_claimed_epsilon_1_is_a_violation(runs_dir, monkeypatch,
                                                                     sets):
    """A deliberately broken client: the accountant still computes σ for ε 1, but the noise
    the hospitals add (to the update, or to DP-SGD's sum) is zero. The audit sees it through
    what the server receives."""
    monkeypatch.setattr(engine.clients.dp, "compute_stdv", lambda *_: 0.0)
    audit = _audited(runs_dir, "defenses.dp.target_epsilon=1", *sets)
    assert audit["accountant_epsilon"] == pytest.approx(1.0, rel=0.02)
    assert audit["verdict"] == "violation" and audit["epsilon_lower_bound"] > 3


def test_the_batched_and_sequential_paths_audit_alike(runs_dir):
    """Both in-process paths noise every upload in the hospitals' client code, the canaries'
    included: the audits agree, but for the float rounding of the final global model that
    the canaries' float32 models are built on (the two paths round differently)."""
    on, off = (_audited(runs_dir, "defenses.dp.target_epsilon=8",
                        f"federation.batched_clients={mode}") for mode in ("on", "off"))
    assert on.pop("seconds") >= 0 and off.pop("seconds") >= 0
    assert on.pop("one_shot_estimate") == pytest.approx(off.pop("one_shot_estimate"), rel=1e-5)
    assert on == off and on["epsilon_lower_bound"] > 0.5


def test_patient_canaries_are_sampled_and_clipped_like_patients():
    """DP-SGD without noise, SGD: against the same training without canaries, each present
    canary's coordinate moves by −lr·C/(q·declared) each time it is drawn (its 2C clipped to
    C), about q × steps times; an absent canary's does not move. (A small lr keeps the
    canaries' effect on the patients' later gradients negligible.)"""
    torch.manual_seed(0)
    net = build_unet((4, 8), "instance", 0)
    data = SliceSet.concat([phantom_patient(0, 0, p, image_size=16, n_slices=2)
                            for p in range(4)])
    start = get_parameters(net)
    canaries = gradient_canaries(net, 64, clip_norm=0.5, seed=3)
    local = LocalTraining(loss="mse", optimizer="sgd", lr=1e-4, local_epochs=1, batch_size=2)
    acc = DPAccounting("sample", 0.0, 0.5, 20, 1e-5)
    with_, without = (train_local_dp_sgd(net, start, data, local, acc, 0.5, declared_patients=4,
                                         seed=7, canaries=c)[0] for c in (canaries, None))
    names = list(net.state_dict())
    moved = np.array([(with_[names.index(n)] - without[names.index(n)]).ravel()[i]
                      for n, i in zip(canaries.names, canaries.index, strict=True)])
    step = 1e-4 * 0.5 / (0.5 * 4)  # lr · C / (q · declared patients)
    draws = -moved[canaries.present] / step
    assert np.abs(draws - np.round(draws)).max() < 0.05  # whole draws of C: clipped
    assert draws.min() >= 0 and draws.mean() == pytest.approx(10, abs=3)  # q × 20 steps
    assert np.abs(moved[~canaries.present]).max() < 0.05 * step


def test_the_audit_needs_dp_of_its_kind_and_a_server_view():
    with pytest.raises(ConfigError, match="attacks.dp_audit.kind = 'client' audits "
                                          "hospital-level DP"):
        build_config("smoke", sets=["attacks.dp_audit.enabled=true"])
    with pytest.raises(ConfigError, match="defenses.dp.level = sample"):
        build_config("smoke", sets=["attacks.dp_audit.enabled=true", "defenses.dp.enabled=true",
                                    "attacks.dp_audit.kind=patient"])
    with pytest.raises(ConfigError, match="set federation.server_view_rounds = all"):
        build_config("smoke", sets=["attacks.dp_audit.enabled=true", "defenses.dp.enabled=true",
                                    "defenses.dp.level=sample", "attacks.dp_audit.kind=patient",
                                    "federation.server_view_rounds=none"])


def _roc_hull(scores_in: np.ndarray, scores_out: np.ndarray) -> list[tuple[int, int]]:
    """(false, true) positives at the vertices of the ROC's upper convex hull, guessing
    'present' for scores ≥ a threshold (collinear points dropped)."""
    t = np.union1d(scores_in, scores_out)[::-1]
    tp = np.searchsorted(-np.sort(scores_in)[::-1], -t, side="right")
    fp = np.searchsorted(-np.sort(scores_out)[::-1], -t, side="right")
    hull: list[tuple[int, int]] = []
    for p in [(0, 0), *zip(fp.tolist(), tp.tolist(), strict=True)]:
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) >= 0:
            hull.pop()
        hull.append(p)
    return hull


@pytest.mark.parametrize(("shift", "published"), [(1, 1.13346), (2, 2.311945), (4, 4.395568)])
def test_one_run_bound_matches_jax_privacy_published_values(shift, published):
    """jax_privacy's auditing tests publish the one-run bound (one-sided guesses, Bonferroni
    over the ROC hull's thresholds) for 10,000 present and 10,000 absent canaries whose
    scores are evenly spaced quantiles of N(shift, 1) and N(0, 1), at 95 % and δ = 1e-6.
    The same guesses through :func:`one_run_epsilon` give the same ε."""
    n = 10_000
    quantiles = np.linspace(0, 1, n, endpoint=False) + 1 / (2 * n)
    hull = _roc_hull(norm.ppf(quantiles) + shift, norm.ppf(quantiles))
    confidence, best = 1 - 0.05 / len(hull), 0.0
    # Most precise guess sets first; a set no more precise than e^best : 1 cannot beat best.
    for fp, tp in sorted(hull, key=lambda p: -p[1] / max(sum(p), 1)):
        if tp + fp and tp / (tp + fp) > 1 / (1 + math.exp(-best)):
            best = max(best, one_run_epsilon(2 * n, tp + fp, tp, 1e-6, confidence))
    assert best == pytest.approx(published, abs=2e-4)  # their search stops at a 1e-4 tolerance


def test_more_canary_patients_than_coordinates_is_refused():
    net = build_unet((4, 8), "instance", 0)
    n = sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match=f"canaries = {n + 1:,} is more than the model's {n:,} "
                                         "parameters"):
        gradient_canaries(net, n + 1, 1.0, 0)
    assert len(gradient_canaries(net, n, 1.0, 0).names) == n
