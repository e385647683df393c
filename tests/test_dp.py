"""Differential privacy: clipping and noise, what a DP hospital reports, and ε from Opacus's
RDP accountant."""

import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from engine.clients.behaviour import client_update, dp_accountings
from engine.clients.dp import (
    DP_PUBLIC_METADATA,
    dp_accounting,
    patient_gradients,
    privatize_update,
    train_local_dp_sgd,
)
from engine.core.config import ConfigError
from engine.data.cohort import load_cohort
from engine.data.phantom import phantom_patient
from engine.data.types import SliceSet
from engine.federation.server_view import ServerView
from engine.learning.local import LocalTraining
from engine.learning.model import build_unet, get_parameters
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run


def test_clipping_bound_holds_without_noise():
    rng = np.random.default_rng(0)
    glob = [rng.normal(size=(10, 10)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    local = [g + rng.normal(scale=3.0, size=g.shape).astype(np.float32) for g in glob]
    out, meta = privatize_update(local, glob, clip_norm=0.5, noise_multiplier=0.0, rng=rng)
    diffs = [o.astype(np.float64) - g for o, g in zip(out, glob, strict=True)]
    norm = np.sqrt(sum((d**2).sum() for d in diffs))
    assert norm == pytest.approx(0.5, rel=1e-5)  # the raw update was far larger: clipped
    assert meta == {"noise_std": 0.0}  # nothing about the raw update leaves the client


def test_small_update_is_not_scaled_and_noise_has_sigma_c():
    rng = np.random.default_rng(1)
    glob = [np.zeros(200_000, dtype=np.float32)]
    local = [np.full(200_000, 1e-4, dtype=np.float32)]
    out, meta = privatize_update(local, glob, clip_norm=2.0, noise_multiplier=0.5, rng=rng)
    assert meta == {"noise_std": 1.0}
    noise = out[0].astype(np.float64) - 1e-4
    assert abs(noise.std() - 1.0) < 0.01 and abs(noise.mean()) < 0.01


def test_an_unchanged_model_is_noised_not_refused():
    """A zero update (a hospital whose model did not move) needs no clipping and still gets
    its noise; Flower's clip alone divided by its norm and raised ZeroDivisionError."""
    glob = [np.ones((50, 40), np.float32)]
    out, meta = privatize_update([g.copy() for g in glob], glob, clip_norm=2.0,
                                 noise_multiplier=0.5, rng=np.random.default_rng(0))
    noise = out[0].astype(np.float64) - 1.0
    assert meta == {"noise_std": 1.0} and abs(noise.std() - 1.0) < 0.05
    same, _ = privatize_update([g.copy() for g in glob], glob, 2.0, 0.0,
                               np.random.default_rng(0))
    np.testing.assert_array_equal(same[0], glob[0])


def test_integer_buffers_pass_through():
    glob = [np.zeros(3, np.float32), np.array(7, np.int64)]
    local = [np.ones(3, np.float32), np.array(9, np.int64)]
    out, _ = privatize_update(local, glob, 1.0, 1.0, np.random.default_rng(0))
    assert out[1] == 9 and out[1].dtype == np.int64


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
@pytest.mark.parametrize(("sigma", "rounds", "delta", "expected"),
                         [(1.0, 20, 1e-5, 30.1), (5.0, 20, 1e-5, 4.16), (0.03, 20, 1e-5, 1.23e4)])
def test_client_level_epsilon_is_the_rdp_accountants(sigma, rounds, delta, expected):
    dp = build_config(sets=["defenses.dp.enabled=true",
                            f"defenses.dp.noise_multiplier={sigma}",
                            f"defenses.dp.delta={delta}"]).defenses.dp
    acc = dp_accounting(dp, rounds, LocalTraining(), num_examples=16)
    reference = RDPAccountant()
    for _ in range(rounds):
        reference.step(noise_multiplier=sigma, sample_rate=1.0)
    assert acc.epsilon(rounds) == pytest.approx(reference.get_epsilon(delta), rel=1e-9)
    assert acc.epsilon(rounds) == pytest.approx(expected, rel=0.01)  # the published figures
    assert acc.epsilon(1) < acc.epsilon(rounds // 2) < acc.epsilon(rounds)


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
@pytest.mark.parametrize(("sigma", "add_remove", "replace"),
                         [(1.0, 30.1, 81.1), (3.0, 7.53, 17.7), (5.0, 4.16, 9.37)])
def test_replacing_a_hospital_costs_the_epsilon_of_half_the_noise(sigma, add_remove, replace):
    """Two clipped hospital updates differ by up to 2C: replacing one hospital's data by
    another's is the Gaussian mechanism at σ/2 (20 rounds, δ 1e-5; the figures a review
    computed with Opacus); patient-level DP-SGD gives no substitution ε."""
    dp = build_config(sets=["defenses.dp.enabled=true",
                            f"defenses.dp.noise_multiplier={sigma}"]).defenses.dp
    acc = dp_accounting(dp, 20, LocalTraining(), num_examples=16)
    half = dp_accounting(dp.model_copy(update={"noise_multiplier": sigma / 2}), 20,
                         LocalTraining(), num_examples=16)
    assert acc.epsilon(20) == pytest.approx(add_remove, rel=0.01)
    assert acc.epsilon_substitution(20) == pytest.approx(replace, rel=0.01)
    assert acc.epsilon_substitution(20) == half.epsilon(20) > acc.epsilon(20)
    patient = dp.model_copy(update={"level": "sample"})
    assert dp_accounting(patient, 20, LocalTraining(), 16).epsilon_substitution(20) is None


@pytest.mark.parametrize("level", ["client", "sample"])
@pytest.mark.parametrize("target", [1.0, 4.0, 64.0])
def test_target_epsilon_is_honoured(level, target):
    cfg = build_config(sets=["defenses.dp.enabled=true", f"defenses.dp.level={level}",
                             f"defenses.dp.target_epsilon={target}", "federation.rounds=12",
                             "federation.local_epochs=3", "federation.batch_size=4"])
    acc = dp_accounting(cfg.defenses.dp, 12, LocalTraining.from_config(cfg), num_examples=24)
    assert acc.noise_multiplier > 0
    assert acc.epsilon(12) == pytest.approx(target, rel=0.02)
    assert acc.epsilon(12) <= target * 1.001  # never a weaker guarantee than asked for
    if level == "sample":
        assert acc.sample_rate == pytest.approx(4 / 24) and acc.steps_per_round == 3 * 6


def test_noise_and_target_together_are_refused():
    with pytest.raises(ConfigError, match=r"target_epsilon = 4.0 and .*noise_multiplier = 1.0"):
        build_config(sets=["defenses.dp.noise_multiplier=1", "defenses.dp.target_epsilon=4"])
    with pytest.raises(ConfigError, match=r"level = 'sample' cannot be combined with "
                                          r"model.norm = 'batch'"):
        build_config(sets=["defenses.dp.enabled=true", "defenses.dp.level=sample",
                           "model.norm=batch"])


def test_patient_gradients_average_each_patients_slices():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 1, 1))
    x, y = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    owner = torch.tensor([0, 0, 1, 1, 1])
    params = {k: v.detach() for k, v in net.named_parameters()}
    got = patient_gradients(net, params, {}, x, y, owner, 2, "mse")
    for patient, rows in ((0, [0, 1]), (1, [2, 3, 4])):
        net.zero_grad()
        loss = sum(torch.nn.functional.mse_loss(net(x[i : i + 1]), y[i : i + 1]) for i in rows)
        (loss / len(rows)).backward()
        want = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(got[patient], want, rtol=1e-5, atol=1e-7)


def test_dp_sgd_bounds_each_patients_influence():
    """Without noise, one step of plain SGD (lr 1) moves the weights by at most C per sampled
    patient, divided by the expected number of patients."""

    torch.manual_seed(0)
    net = build_unet((4, 8), "instance", 0)
    data = SliceSet.concat([phantom_patient(0, 0, p, image_size=16, n_slices=3)
                            for p in range(4)])
    start = get_parameters(net)
    local = LocalTraining(loss="l1", optimizer="sgd", lr=1.0, local_epochs=1, batch_size=12)
    dp = build_config(sets=["defenses.dp.enabled=true", "defenses.dp.level=sample",
                            "defenses.dp.clip_norm=0.01"]).defenses.dp
    acc = dp_accounting(dp, 1, local, num_examples=len(data))
    assert acc.sample_rate == 1.0 and acc.steps_per_round == 1
    trained, meta = train_local_dp_sgd(net, start, data, local, acc, 0.01,
                                       declared_patients=4, seed=0)
    names = [n for n, _ in net.named_parameters()]
    state = list(net.state_dict())
    moved = math.sqrt(sum(float(((trained[state.index(n)] - start[state.index(n)]) ** 2).sum())
                          for n in names))
    assert 0 < moved <= 0.01 * 4 / 4 + 1e-6  # 4 patients, each clipped to 0.01, ÷ 4
    assert set(meta) <= set(DP_PUBLIC_METADATA)


@pytest.mark.parametrize("level", ["client", "sample"])
def test_dp_run_reports_epsilon_and_no_raw_quantity(runs_dir, level):

    cfg = build_config("smoke", sets=["federation.rounds=2", "defenses.dp.enabled=true",
                                      f"defenses.dp.level={level}",
                                      "defenses.dp.target_epsilon=8",
                                      "defenses.dp.clip_norm=0.5"])
    run = create_run(cfg)
    summary = execute(run)
    assert summary is not None, (run.path / "log.txt").read_text()
    dp = summary["federation"]["dp"]
    assert dp["level"] == level and dp["delta"] == 1e-5
    assert dp["epsilon"] == pytest.approx(8.0, rel=0.02) and dp["meaningful"]
    assert dp["neighbouring"].startswith("add/remove one")
    if level == "client":  # σ reaches ε 8 for add/remove; replacing costs σ/2's ε
        assert dp["epsilon_substitution"] > 2 * dp["epsilon"]
        assert dp["substitution"].startswith("replace one hospital")
    else:
        assert dp["epsilon_substitution"] is None and dp["substitution"] is None
    records = run.metrics()
    eps = [r["dp_epsilon"] for r in records if r["round"] > 0]
    assert eps[0] < eps[1] == pytest.approx(dp["epsilon"])
    # No per-client quantity that depends on the raw update or data reaches the server.
    for r in records:
        for meta in r["clients"].values():
            assert set(meta) <= set(DP_PUBLIC_METADATA), meta
    view = ServerView(run.path)
    for rnd in view.rounds:
        for meta in view[rnd].metadata.values():
            assert set(meta) <= set(DP_PUBLIC_METADATA), meta
    text = (run.path / "metrics.jsonl").read_text() + json.dumps(
        [json.loads(p.read_text()) for p in (run.path / "server_view").glob("*.json")])
    for leak in ("update_norm", "clipped", "train_loss"):
        assert leak not in text


@pytest.mark.parametrize("level", ["client", "sample"])
def test_what_a_dp_hospital_reports_does_not_depend_on_its_size(level):
    """A hospital of 1 patient and one of 5 report the same values and are accounted the
    same: the declared size, σ for the target ε, the steps per round (issue: a hospital's
    patient count leaked through num_examples, steps and the noise std)."""
    cfg = build_config("smoke", sets=["defenses.dp.enabled=true", f"defenses.dp.level={level}",
                                      "defenses.dp.target_epsilon=8", "federation.rounds=1"])
    smoke_cohort = load_cohort(cfg.data, cfg.seed)
    pool = SliceSet.concat([c.train for c in smoke_cohort.centers])
    small = pool.select(np.flatnonzero(pool.patient_ids == pool.patients[0]))
    large = pool.select(np.flatnonzero(np.isin(pool.patient_ids, pool.patients[:5])))
    assert len(small.patients) == 1 and len(large.patients) == 5
    net = build_unet((4, 8), "instance", 0)
    start = get_parameters(net)
    metas = [client_update(cfg, net, 1, 0, data, start)[1] for data in (small, large)]
    d = cfg.data
    assert metas[0] == metas[1]
    assert metas[0]["num_examples"] == d.patients_per_center * d.slices_per_patient
    assert set(metas[0]) <= set(DP_PUBLIC_METADATA)
    accountings = set(dp_accountings(cfg, smoke_cohort).values())
    assert len(accountings) == 1  # every DP hospital the same, whatever its size
