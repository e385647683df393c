"""Poisoning: the attacks as array functions, the server's detection view, and their effect
on a real federation (FedAvg breaks under update noise, the median holds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.analyses.poisoning import mean_interval, poisoning_verdict
from engine.clients.malicious import (
    alie_upload,
    noisy_upload,
    poison_slices,
    scaled_upload,
    sign_flipped_upload,
)
from engine.core.config import ConfigError
from engine.core.units import hu_to_unit
from engine.data.phantom import phantom_patient
from engine.federation.detection import update_statistics
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

GLOBAL = [np.array([1.0, 2.0, 3.0], np.float32), np.array(4, np.int64)]
LOCALS = [[np.array([2.0, 2.0, 1.0], np.float32), np.array(9, np.int64)],
          [np.array([1.0, 4.0, 3.0], np.float32), np.array(9, np.int64)],
          [np.array([3.0, 3.0, 2.0], np.float32), np.array(9, np.int64)]]


@pytest.mark.parametrize(("ratios", "fedavg", "expected"), [
    ([1.1, 1.2, 1.0], [2.5, 3.0, 1.3], "protected"),
    ([1.1, 1.2, 1.0], [2.5, 3.0, 1.2], "attack_too_weak"),  # one seed did not hurt FedAvg
    ([1.1], [], "attack_too_weak"),
    ([1.3, 1.5], [2.0, 2.2], "damaged"),
    ([2.1, 1.95], [2.0, 2.2], "broken"),
    ([1.0, 1.1], [1.0, 1.1], "attack_too_weak"),  # FedAvg judged by its own ratios
])
def test_protected_needs_an_attack_that_hurt_fedavg(ratios, fedavg, expected):
    assert poisoning_verdict(ratios, fedavg) == expected


def test_ratio_interval_is_students_over_seeds():
    lo, hi = mean_interval([1.0, 1.2, 1.4])
    assert (lo + hi) / 2 == pytest.approx(1.2)
    assert hi - lo == pytest.approx(2 * 4.302653 * 0.2 / np.sqrt(3), rel=1e-5)
    assert mean_interval([1.3]) is None


def test_sign_flip_and_scaling_act_on_the_update():
    np.testing.assert_allclose(sign_flipped_upload(LOCALS[0], GLOBAL, 2.0)[0], [-1, 2, 7])
    np.testing.assert_allclose(scaled_upload(LOCALS[0], GLOBAL, 3.0)[0], [4, 2, -3])
    assert scaled_upload(LOCALS[0], GLOBAL, 3.0)[1] == 9  # integer buffers untouched


def test_alie_is_mean_minus_z_std_of_honest_updates():
    # updates: [1,0,-2], [0,2,0], [2,1,-1] → mean [1,1,-1], std sqrt(2/3) each
    out = alie_upload(LOCALS, GLOBAL, z=1.5)[0]
    expected = np.array([1, 2, 3]) + np.array([1, 1, -1]) - 1.5 * np.sqrt(2 / 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_update_noise_has_the_requested_std():
    big = [np.zeros(100_000, np.float32), np.array(1, np.int64)]
    out = noisy_upload(big, 0.3, np.random.default_rng(0))
    assert out[0].std() == pytest.approx(0.3, rel=0.02) and out[1] == 1


def test_data_noise_poisons_the_requested_share_and_target_only():
    clean = phantom_patient(0, 0, 0, image_size=32, n_slices=4)
    dirty = poison_slices(clean, "mri", 0.2, 0.5, np.random.default_rng(1))
    changed = [not np.array_equal(a, b) for a, b in zip(dirty.mri, clean.mri, strict=True)]
    assert sum(changed) == 2
    np.testing.assert_array_equal(dirty.ct_hu, clean.ct_hu)
    assert (dirty.mri - clean.mri)[changed].std() == pytest.approx(0.2, rel=0.05)
    ct = poison_slices(clean, "ct", 0.05, 1.0, np.random.default_rng(1))
    np.testing.assert_array_equal(ct.mri, clean.mri)
    diff = hu_to_unit(ct.ct_hu) - hu_to_unit(clean.ct_hu)
    inside = (clean.ct_hu > -900) & (clean.ct_hu < 2500)  # away from the clipping range
    assert diff[inside].std() == pytest.approx(0.05, rel=0.1)


def test_detection_flags_the_outlier_among_similar_updates():
    rng = np.random.default_rng(0)
    glob = [np.zeros(500, np.float32)]
    honest = {f"c{i}": [rng.normal(0, 0.01, 500).astype(np.float32)] for i in range(3)}
    stats = update_statistics(honest | {"bad": [rng.normal(0, 0.5, 500).astype(np.float32)]},
                              glob)
    assert [c for c, s in stats.items() if s["flagged"]] == ["bad"]
    assert stats["bad"]["update_norm"] == pytest.approx(0.5 * np.sqrt(500), rel=0.1)


@pytest.mark.parametrize(("sets", "pattern"), [
    (["attacks.poisoning.malicious_centers=[3]"], r"distinct center index in 0…2"),
    (["attacks.poisoning.malicious_centers=[0, 0]"], r"distinct"),
    (["attacks.poisoning.malicious_centers=[0, 1, 2]"], r"leaves no honest center"),
    (["attacks.poisoning.kind=backdoor"], r"attacks\.poisoning\.kind = 'backdoor'"),
])
def test_impossible_poisoning_is_refused(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config("smoke", sets=["attacks.poisoning.enabled=true", *sets])


def _run(sets: list[str]) -> dict:

    run = create_run(build_config("smoke", sets=["federation.rounds=4", *sets]))
    assert execute(run) is not None, (run.path / "log.txt").read_text()
    return json.loads((run.path / "summary.json").read_text())


def test_update_noise_breaks_fedavg_and_the_median_holds(runs_dir):
    attack = ["attacks.poisoning.enabled=true", "attacks.poisoning.kind=update_noise",
              "attacks.poisoning.noise_std=1.0"]
    avg = _run(attack)["poisoning"]
    med = _run([*attack, "federation.aggregator=fedmedian"])["poisoning"]
    assert avg["cells"][0]["mae_ratio"] >= 2.0, avg["cells"]
    assert med["cells"][0]["mae_ratio"] <= 1.25, med["cells"]
    assert avg["detection"]["detected"] == ["center-0"]
    # FedAvg is its own control; the median is protected only because the same attack
    # broke FedAvg: its control is that FedAvg run (reused), hurt at every seed.
    assert avg["verdict"] == "broken" and avg["fedavg_control"]["self"]
    assert med["verdict"] == "protected", med
    control = med["fedavg_control"]
    assert control["hurt"] and not control["self"]
    assert control["seeds"][0]["mae_ratio"] == pytest.approx(avg["cells"][0]["mae_ratio"])
    weak = _run(["attacks.poisoning.enabled=true", "attacks.poisoning.kind=update_noise",
                 "attacks.poisoning.noise_std=0.0001", "federation.aggregator=fedmedian"])
    assert weak["poisoning"]["verdict"] == "attack_too_weak", weak["poisoning"]
    # A finished clean run with the same settings is reused as the baseline.
    _run([])
    again = _run(attack)["poisoning"]
    assert again["baseline_run"] is not None
    assert again["baseline"] == avg["baseline"]
