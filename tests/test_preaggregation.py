"""Centred clipping, DnC and the pre-aggregators NNM and ARC: hand-made arrays with answers
worked out by hand, the same arrays through ByzFL 0.0.11 (an independent implementation:
its outputs are written here as reference numbers), the server's step and the config's
refusals, and federations that train with them.

Figures worked out here are exact up to float rounding (compared to 1e-9 relative, or
1e-12); ByzFL's are compared to the digits it printed (1e-7 or 1e-8 relative)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.core.config import ConfigError
from engine.core.config.robust import breakdown_limit, rule_key, rule_words
from engine.core.types import flat_update
from engine.data.cohort import load_cohort
from engine.federation.aggregators import (
    CenteredClipping,
    DnC,
    arc,
    centred_clipping,
    dnc_keep,
    nnm,
    server_updates,
)
from engine.federation.inprocess import run_federation
from engine.orchestration.presets import build_config
from engine.orchestration.sweep_catalogue import (
    BREAKDOWN_RULES,
    BREAKDOWN_RULES_16,
    BREAKDOWN_RULES_64,
    sweep_spec,
)

# Five updates in 3-D, the last an outlier.
X = np.array([[1., 2., 0.], [2., 1., 1.], [0., 0., 3.], [3., 3., 3.], [40., -20., 10.]])


def test_nnm_mixes_each_update_with_its_nearest_by_hand() -> None:
    """f = 1: each update becomes the mean of its four nearest (itself included). The four
    honest ones are each other's nearest (the outlier is ≥ 38 away): all four get their
    mean (1.5, 1.5, 1.75); the outlier's nearest are itself and the three closest to it."""
    out = nnm(X, 1)
    np.testing.assert_allclose(out[:4], np.tile([1.5, 1.5, 1.75], (4, 1)), rtol=1e-12)
    dist = np.linalg.norm(X[:4] - X[4], axis=1)
    mine = [4, *np.argsort(dist)[:3]]
    np.testing.assert_allclose(out[4], X[mine].mean(axis=0), rtol=1e-12)


def test_arc_clips_the_longest_to_the_next_by_hand() -> None:
    """f = 1 of 5: k = ⌊2·1·4/5⌋ = 1, the outlier clipped to the norm of (3, 3, 3), √27,
    in its own direction; f = 2: k = ⌊2·2·3/5⌋ = 2, the two longest clipped to the third's
    norm (‖(0, 0, 3)‖ = 3); the others unchanged."""
    one = arc(X, 1)
    np.testing.assert_array_equal(one[:4], X[:4])
    assert np.linalg.norm(one[4]) == pytest.approx(math.sqrt(27.0), rel=1e-12)
    np.testing.assert_allclose(one[4] / np.linalg.norm(one[4]),
                               X[4] / np.linalg.norm(X[4]), rtol=1e-12)
    two = arc(X, 2)
    np.testing.assert_array_equal(two[:3], X[:3])
    np.testing.assert_allclose(np.linalg.norm(two[3:], axis=1), [3.0, 3.0], rtol=1e-12)
    np.testing.assert_array_equal(arc(X, 0), X)


def test_nnm_arc_and_centred_clipping_agree_with_byzfl() -> None:
    """The same arrays through ByzFL 0.0.11's ``NNM``, ``ARC`` and ``CenteredClipping``
    (τ 2, from 0; L 1 and 3): its outputs, computed with that library and written here."""
    np.testing.assert_allclose(nnm(X, 2), [
        [1.0, 1.0, 4 / 3], [1.0, 1.0, 4 / 3], [1.0, 1.0, 4 / 3], [2.0, 2.0, 4 / 3],
        [15.0, -16 / 3, 14 / 3]], rtol=1e-9)
    np.testing.assert_allclose(arc(X, 2)[3:], [
        [1.73205081, 1.73205081, 1.73205081], [2.61861468, -1.30930734, 0.65465367]],
        rtol=1e-8)
    zero = np.zeros(3)
    np.testing.assert_allclose(centred_clipping(X, zero, 2.0, iterations=1),
                               [1.0855728, 0.57743599, 0.88152658], rtol=1e-7)
    np.testing.assert_allclose(centred_clipping(X, zero, 2.0, iterations=3),
                               [1.84208257, 1.09814437, 1.58647029], rtol=1e-7)


def test_centred_clipping_bounds_what_one_update_can_move() -> None:
    """Each iteration moves the centre by at most τ/n per attacker, however far it sends:
    with nine identical honest updates at the centre and one at 10⁶, three iterations end
    within 3τ/10 of the honest ones; the mean would be 10⁵ away."""
    points = np.vstack([np.zeros((9, 4)), np.full((1, 4), 1e6)])
    out = centred_clipping(points, np.zeros(4), tau=1.0, iterations=3)
    assert 0 < np.linalg.norm(out) <= 3 * 1.0 / 10 + 1e-12


def test_the_centred_clipping_rule_clips_around_the_global_model() -> None:
    """The rule on models: τ = ``tau`` × the median distance from the global model (the
    origin), the result the global model plus centred clipping of the updates; without the
    global model it refuses."""
    origin = [np.array([10.0, -5.0, 2.0])]
    results = [([origin[0] + x], 1) for x in X]
    tau = float(np.median(np.linalg.norm(X, axis=1)))
    got = CenteredClipping(tau=1.0)(results, origin)[0]
    np.testing.assert_allclose(got, origin[0] + centred_clipping(X, np.zeros(3), tau),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="centered_clipping needs the round's global model"):
        CenteredClipping()(results)


def test_the_breakdown_studies_stay_within_each_rules_limit() -> None:
    """Every attacked cell of the breakdown studies is within its rule's breakdown limit
    (the config refuses more), and the first study reaches each robust rule's limit."""
    for name, n, rules in (("poison-breakdown", 8, BREAKDOWN_RULES),
                           ("poison-breakdown-16", 16, BREAKDOWN_RULES_16),
                           ("poison-breakdown-64", 64, BREAKDOWN_RULES_64)):
        spec = sweep_spec(name)
        assert build_config(spec["base"]).data.centers == n
        for key, (sets, fs) in rules.items():
            limit = breakdown_limit(build_config(spec["base"], sets=sets).federation, n)
            if limit is not None:
                assert max(fs) <= limit[0], (name, key)
                assert n > 8 or max(fs) == limit[0], key


def test_dnc_drops_the_update_that_stands_out() -> None:
    """Eight updates spread in every direction and one far along a line: DnC (f 1) drops
    exactly that one, on all 40 coordinates and on 10 drawn at random; f 0 keeps everyone
    (the mean). The rule on models from a global model: that model plus the honest mean."""
    rng = np.random.default_rng(3)
    honest = rng.normal(0.0, 1.0, (8, 40))
    points = np.vstack([honest, honest.mean(0) + 30.0 * np.ones(40) / math.sqrt(40)])
    assert dnc_keep(points, 1, np.random.default_rng(0)) == list(range(8))
    assert dnc_keep(points, 1, np.random.default_rng(0), dims=10) == list(range(8))
    assert dnc_keep(points, 0, np.random.default_rng(0)) == list(range(9))
    origin = [np.full(40, 2.0)]
    got = DnC(num_malicious=1)([([origin[0] + p], 1) for p in points], origin)[0]
    np.testing.assert_allclose(got, origin[0] + honest.mean(0), rtol=1e-9)
    with pytest.raises(ValueError, match="dnc needs the round's global model"):
        DnC()([([p], 1) for p in points])


def test_centred_clipping_and_dnc_measure_float_parameters_only() -> None:
    """An integer buffer (BatchNorm's step counter) that differs by thousands between
    uploads changes neither rule's float result; the buffer itself becomes the uploads'
    median."""
    origin = [np.zeros(3), np.array(0, dtype=np.int64)]
    plain = [([x, np.array(5, dtype=np.int64)], 1) for x in X]
    counted = [([x, np.array(5 + 1000 * i, dtype=np.int64)], 1) for i, x in enumerate(X)]
    for rule in (CenteredClipping(), DnC(num_malicious=1)):
        np.testing.assert_array_equal(rule(counted, origin)[0], rule(plain, origin)[0])
        assert rule(counted, origin)[1] == 2005


def test_the_server_mixes_float_updates_and_keeps_other_buffers() -> None:
    """:func:`server_updates` with NNM: each hospital's float parameters become the global
    model plus its mixed update; an integer buffer stays as uploaded."""
    glob = [np.array([1.0, 1.0, 1.0]), np.array(7, dtype=np.int64)]
    uploads = {f"c{i}": [glob[0] + x, np.array(7 + i, dtype=np.int64)]
               for i, x in enumerate(X)}
    mixed = server_updates(uploads, glob, "none", "nnm", 1)
    want = nnm(X, 1)
    for i, c in enumerate(uploads):
        np.testing.assert_allclose(flat_update(mixed[c], glob), want[i], rtol=1e-12)
        assert mixed[c][1] == 7 + i and mixed[c][1].dtype == np.int64
    assert server_updates(uploads, glob, "none", "none", 1) is uploads


def test_a_rule_key_names_the_pre_aggregator_first() -> None:
    assert rule_key("fedmedian", "nnm") == "nnm+fedmedian"
    assert rule_key("fedmedian", "none") == rule_key("fedmedian") == "fedmedian"
    assert rule_words("arc+trimmed_mean") == "ARC + Trimmed mean"


@pytest.mark.parametrize(("sets", "pattern"), [
    (["federation.pre_aggregator=nnm", "defenses.secure_aggregation=true"],
     "federation.pre_aggregator = 'nnm' works on each hospital's update, which the server "
     "never sees under secure aggregation"),
    (["federation.pre_aggregator=arc", "defenses.flame=true"],
     "defenses.flame = true aggregates the individual updates itself, so it cannot be "
     "combined with federation.pre_aggregator = 'arc'"),
    (["federation.aggregator=dnc", "federation.num_malicious=2"],
     "federation.aggregator = 'dnc' with federation.num_malicious = 2 needs a majority of "
     "honest centers, data.centers > 2f = 4, got 4"),
    (["federation.pre_aggregator=nnm", "federation.sample_rate=0.5"],
     "federation.sample_rate = 0.5 leaves hospitals out of some rounds, which "
     "federation.pre_aggregator = 'nnm' does not support"),
    (["federation.aggregator=centered_clipping", "defenses.secure_aggregation=true"],
     "cannot be combined with federation.aggregator = 'centered_clipping'"),
    (["federation.cc_tau=0"], "federation.cc_tau"),
])
def test_settings_the_rules_cannot_honour_are_refused(sets: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build_config("poison-base", sets=sets)


@pytest.mark.parametrize("sets", [
    ["federation.aggregator=centered_clipping"],
    ["federation.aggregator=dnc"],
    ["federation.aggregator=fedmedian", "federation.pre_aggregator=nnm"],
    ["federation.aggregator=trimmed_mean", "federation.pre_aggregator=arc",
     "attacks.poisoning.enabled=true", "attacks.poisoning.kind=fang_trim"],
])
def test_a_federation_trains_with_the_rule(sets: list[str]) -> None:
    """Two rounds of poison-base (4 hospitals) through the in-process runtime: the run
    finishes with a finite error, lower than the initial model's."""
    cfg = build_config("poison-base", sets=["federation.rounds=2", *sets])
    result = run_federation(cfg, load_cohort(cfg.data, cfg.seed))
    first, last = result.history[0]["mae_hu"], result.history[-1]["mae_hu"]
    assert [h["round"] for h in result.history] == [0, 1, 2]
    assert math.isfinite(last) and last < first
