"""Secure aggregation (SecAgg+ on Flower's primitives): correctness, hiding, dropouts."""

from __future__ import annotations

import numpy as np
import pytest

from engine.federation.secagg import SecAggError, SecAggSession, secure_weighted_mean
from engine.federation.secagg_encoding import SecAggParams, quantization_error_bound

SHAPES = [(4, 3, 3, 3), (17,), (), (5, 7)]


def _uploads(n_clients: int, seed: int = 0, scale: float = 1.0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [(scale * rng.standard_normal(s)).astype(np.float32) for s in SHAPES]
        for _ in range(n_clients)
    ]


def _plain_mean(
    uploads: list[list[np.ndarray]], weights: list[int], clip: float = 8.0
) -> list[np.ndarray]:
    total = sum(weights)
    return [
        sum(
            w * np.clip(u[k].astype(np.float64), -clip, clip)
            for u, w in zip(uploads, weights, strict=True)
        )
        / total
        for k in range(len(uploads[0]))
    ]


def _max_err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - y))) for x, y in zip(a, b, strict=True)
    )


def test_weighted_mean_matches_plain_fedavg_within_bound() -> None:
    ids = ["a", "b", "c", "d"]
    weights = [10, 250, 73, 999]
    ups = _uploads(4, scale=2.0)
    session = SecAggSession(ids, seed=3)
    masked = {c: session.mask(c, u, w) for c, u, w in zip(ids, ups, weights, strict=True)}
    mean, total_weight = session.unmask_aggregate(masked)

    assert [m.shape for m in mean] == SHAPES
    assert all(m.dtype == np.float32 for m in mean)
    bound = quantization_error_bound(weights, SecAggParams())
    assert bound < 1e-4
    assert _max_err(mean, _plain_mean(ups, weights)) <= bound
    assert total_weight == pytest.approx(sum(weights), abs=len(ids) * 1000 / 2**22)


def test_masked_upload_is_uncorrelated_and_uniform() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    # Strongly structured parameters: a ramp plus noise.
    secret = np.linspace(-4, 4, n) + 0.1 * rng.standard_normal(n)
    other = rng.standard_normal(n)
    params = SecAggParams()
    masked, mean = secure_weighted_mean(
        [("hospital", [secret], 120), ("clinic", [other], 80)], params, seed=7
    )
    up = masked["hospital"][0]
    assert up.dtype == np.int64 and up.shape == (n,)
    assert up.min() >= 0 and up.max() < params.modulus_range
    assert abs(np.corrcoef(up.astype(np.float64), secret)[0, 1]) < 0.05
    assert abs(up.mean() / (params.modulus_range / 2) - 1) < 0.02
    counts = np.histogram(up, bins=10, range=(0, params.modulus_range))[0]
    assert np.all(np.abs(counts / n - 0.1) < 0.01)
    # ...yet the sum is still recoverable.
    ref = (120 * secret + 80 * other) / 200
    assert _max_err(mean, [ref]) <= quantization_error_bound([120, 80], params)


def test_dropout_after_masking_gives_survivor_mean() -> None:
    ids = [f"site{i}" for i in range(5)]
    weights = [30, 60, 90, 120, 150]
    ups = _uploads(5, seed=2)
    session = SecAggSession(ids, seed=11)
    assert session.threshold == 3
    masked = {c: session.mask(c, u, w) for c, u, w in zip(ids, ups, weights, strict=True)}
    mean, total_weight = session.unmask_aggregate(masked, dropped={"site2"})

    keep = [0, 1, 3, 4]
    ref = _plain_mean([ups[i] for i in keep], [weights[i] for i in keep])
    assert _max_err(mean, ref) <= quantization_error_bound(
        [weights[i] for i in keep], session.params
    )
    assert total_weight == pytest.approx(sum(weights) - 90, abs=0.01)


def test_missing_upload_counts_as_dropped() -> None:
    ids = ["a", "b", "c"]
    ups = _uploads(3, seed=4)
    session = SecAggSession(ids, params=SecAggParams(reconstruction_threshold=0.5), seed=5)
    masked = {
        c: session.mask(c, u, 100) for c, u in zip(ids[:2], ups[:2], strict=True)
    }  # "c" drops
    mean, _ = session.unmask_aggregate(masked)
    assert _max_err(mean, _plain_mean(ups[:2], [100, 100])) <= quantization_error_bound(
        [100, 100], session.params
    )


def test_too_many_dropouts_raise_clear_error() -> None:
    ids = [f"site{i}" for i in range(5)]
    session = SecAggSession(ids, seed=0)
    masked = {c: session.mask(c, u, 50) for c, u in zip(ids, _uploads(5), strict=True)}
    with pytest.raises(SecAggError, match=r"only 2 of 5 clients survived but 3 shares"):
        session.unmask_aggregate(masked, dropped={"site0", "site1", "site2"})


def test_max_weight_below_num_examples_names_both_values() -> None:
    session = SecAggSession(["a", "b"], SecAggParams(max_weight=100.0))
    with pytest.raises(ValueError, match=r"num_examples 150 .*max_weight 100\.0"):
        session.mask("a", _uploads(1)[0], 150)


def test_values_outside_clipping_range_are_clipped() -> None:
    # SecAgg+ clips raw parameters to ±clipping_range before quantising: anything beyond
    # is lost, whatever the client's weight.
    params = SecAggParams(clipping_range=2.0)
    big = [np.array([5.0, -7.0, 1.5, -0.5], np.float32)]
    small = [np.array([0.5, 0.5, -3.0, 0.0], np.float32)]
    _, mean = secure_weighted_mean([("a", big, 100), ("b", small, 300)], params)
    expected = (100 * np.array([2.0, -2.0, 1.5, -0.5]) + 300 * np.array([0.5, 0.5, -2.0, 0])) / 400
    assert _max_err(mean, [expected]) <= quantization_error_bound([100, 300], params)


def test_deterministic_for_seed_and_masks_change_with_seed() -> None:
    ups = _uploads(3, seed=9)
    rounds = [("a", ups[0], 10), ("b", ups[1], 20), ("c", ups[2], 30)]
    state = np.random.get_state()
    m1, mean1 = secure_weighted_mean(rounds, seed=42)
    m2, mean2 = secure_weighted_mean(rounds, seed=42)
    m3, mean3 = secure_weighted_mean(rounds, seed=43)
    for cid in m1:
        assert all(np.array_equal(x, y) for x, y in zip(m1[cid], m2[cid], strict=True))
        assert not np.array_equal(m1[cid][0], m3[cid][0])
    assert all(np.array_equal(x, y) for x, y in zip(mean1, mean2, strict=True))
    assert _max_err(mean1, mean3) <= 2 * quantization_error_bound([10, 20, 30], SecAggParams())
    # Borrowing NumPy's global RNG for Flower's stochastic rounding leaves it untouched.
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_fresh_entropy_without_seed() -> None:
    ups = _uploads(2, seed=5)
    m1, mean = secure_weighted_mean([("a", ups[0], 5), ("b", ups[1], 7)], seed=None)
    m2, _ = secure_weighted_mean([("a", ups[0], 5), ("b", ups[1], 7)], seed=None)
    assert not np.array_equal(m1["a"][0], m2["a"][0])
    assert _max_err(mean, _plain_mean(ups, [5, 7])) <= quantization_error_bound(
        [5, 7], SecAggParams()
    )


def test_misuse_that_would_leak_is_refused() -> None:
    ids = ["a", "b", "c"]
    session = SecAggSession(ids, seed=1)
    ups = _uploads(3)
    masked = {c: session.mask(c, u, 10) for c, u in zip(ids, ups, strict=True)}
    with pytest.raises(SecAggError, match="masks must never be reused"):
        session.mask("a", ups[0], 10)
    session.unmask_aggregate(masked)
    # Having revealed b_a, survivors refuse to also reveal sk1_a (would unmask "a" alone).
    with pytest.raises(SecAggError, match="refuses to reveal"):
        session.unmask_aggregate(masked, dropped={"a"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modulus_range": 3 * 2**30}, "power of two"),
        ({"quantization_range": 2**32}, "quantization_range"),
        ({"reconstruction_threshold": 1.5}, "reconstruction_threshold"),
        ({"clipping_range": 0.0}, "clipping_range"),
    ],
)
def test_invalid_params_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SecAggParams(**kwargs)


def test_session_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2 clients"):
        SecAggSession(["solo"])
    session = SecAggSession(["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        session.mask("a", [np.array([np.nan, 1.0])], 10)
    with pytest.raises(ValueError, match="unknown client"):
        session.mask("z", [np.zeros(2)], 10)
