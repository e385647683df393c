"""Batched local training (engine/learning/batched.py) gives the sequential path's results.

Tolerance. Both paths compute the same quantities in float32; the batched one takes the same
sums in another order (grouped convolutions, per-hospital loss means), so results agree up to
float32 rounding (relative 1e-7 per operation) as it propagates through training. How far
that goes was measured across CPU kernel selections and thread counts
(``tests/golden/spread.json``, see ``tests/tolerances.py``); every bound below is ``FACTOR``
times the largest value measured there:

* SGD, and Adam on a network without normalisation layers: rounding stays at its own size
  (trained parameters within 4e-6, updates within 4e-6 of their norm, predictions within
  0.013 HU across kernels).
* Training that amplifies rounding. Adam with InstanceNorm/BatchNorm: Adam's step
  lr·m/(√v + ε) is ≈ lr·sign(g) for any |g| ≫ ε, so coordinates whose gradient is near zero
  (a conv bias right before a norm has an exactly zero one) take ±lr steps decided by
  rounding, and later steps carry the difference on. SGD with the L1 loss and InstanceNorm:
  L1's gradient is sign(sCT − CT), so pixels whose residual is at rounding level flip it
  (across kernels the batched prediction moved by up to 0.36 HU, 0.17 HU on an Intel CPU).
  There the test compares the batched path with the sequential path's own sensitivity:
  the sequential path started from global parameters perturbed by 1e-7 relative, measured in
  the test. Its parts are checked tightly instead: gradients of the grouped network and the
  optimiser formulas.
* Whole federations: SGD runs agree tightly in every round; the smoke preset's default (Adam,
  L1, InstanceNorm) in round 1; after 5 rounds its figures are chaotic (the sequential path
  alone moves its final MAE by 4.6 % across kernels), bounded by ``FACTOR`` times that.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerances import FACTOR, FLOOR, measured

from engine.core.config import ConfigError, config_hash
from engine.data.cohort import load_cohort
from engine.data.types import SliceSet
from engine.federation.inprocess import plan_training, run_federation, train_round
from engine.learning.batched import (
    _Optimizer,
    batched_slower_reason,
    grouped_forward,
    train_local_batched,
    unsupported_reason,
)
from engine.learning.local import ADAM_EPS, LocalTraining, predict_sct_hu, train_local
from engine.learning.model import build_unet, get_parameters, set_parameters
from engine.orchestration.presets import build_config


def _bound(quantity: str, floor: float = 0.0) -> float:
    """``FACTOR`` × the largest ``quantity`` measured across kernels in the cases compared
    closely (``EQUAL_CASES``), at least ``floor``."""
    equal = measured("batched", "equal")
    return max(FACTOR * max(case[quantity] for case in equal.values()), floor)


PARAM_ATOL = _bound("param_abs")
UPDATE_RTOL = _bound("update_rel", FLOOR)
PRED_ATOL_HU = _bound("prediction_gap_hu")
LOSS_RTOL = _bound("train_loss_rel", FLOOR)


@pytest.fixture(scope="module")
def smoke_cohort():
    cfg = build_config("smoke")
    return load_cohort(cfg.data, cfg.seed)


def _sets(cohort, kind: str) -> list[SliceSet]:
    """3 hospitals of 12 slices; 5 of 12, 7, 10, 5, 11 (batches of 6: padded, and hospitals
    leave early); 3 of 12, 6, 12 (every batch has 6 slices: BatchNorm needs no padding)."""
    t = [c.train for c in cohort.centers]
    if kind == "3":
        return t
    if kind == "5":
        return [t[0], t[1].select(np.arange(7)), t[2].select(np.arange(10)),
                t[0].select(np.arange(3, 8)), t[1].select(np.arange(1, 12))]
    return [t[0], t[1].select(np.arange(6)), t[2]]


def _train_both(norm, optimizer, loss, mu, sets, start=None):
    torch.manual_seed(0)
    model = build_unet((8, 16, 32), norm, 1)
    start = start or get_parameters(model)
    local = LocalTraining(loss=loss, optimizer=optimizer, lr=1e-2, local_epochs=4,
                          batch_size=6, fedprox_mu=mu)
    seeds = [11 + k for k in range(len(sets))]
    seq = [train_local(model, start, d, local, seed=s) for d, s in zip(sets, seeds, strict=True)]
    bat = train_local_batched(model, start, sets, local, seeds=seeds)
    return model, start, local, seeds, seq, bat


def _prediction_gap(model, a: list, b: list, sets) -> float:
    """Largest |sCT_a − sCT_b| (HU) of two lists of trained parameters on their own slices."""
    gap = 0.0
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    for (pa, _), (pb, _), data in zip(a, b, sets, strict=True):
        set_parameters(m1, pa)
        set_parameters(m2, pb)
        gap = max(gap, float(np.abs(predict_sct_hu(m1, data) - predict_sct_hu(m2, data)).max()))
    return gap


# (norm, optimizer, loss, FedProx mu, hospitals: see _sets)
EQUAL_CASES = [
    ("instance", "sgd", "mse", 0.1, "5"),      # FedProx, unequal sizes
    ("batch", "sgd", "mse", 0.0, "3"),
    ("batch", "sgd", "l1", 0.05, "aligned"),  # BatchNorm, unequal sizes, equal batches
    ("none", "adam", "l1", 0.0, "5"),
    ("none", "adam", "mse", 0.05, "3"),
]
# (norm, optimizer, loss, hospitals): training that amplifies rounding (see the docstring)
AMPLIFIED_CASES = [("instance", "adam", "l1", "5"), ("instance", "adam", "mse", "3"),
                   ("batch", "adam", "l1", "3"), ("instance", "sgd", "l1", "3")]


def _rounding_sensitivity(model, start, local, seeds, sets, seq) -> float:
    """What float32 rounding alone does to the sequential path (largest prediction gap, HU):
    start it from the global parameters perturbed by 1e-7 relative, twice."""
    rng = np.random.default_rng(1)
    sensitivity = 0.0
    for _ in range(2):
        nudged = [(a * (1 + 1e-7 * rng.standard_normal(a.shape))).astype(a.dtype)
                  if a.dtype.kind == "f" else a for a in start]
        other = [train_local(model, nudged, d, local, seed=s)
                 for d, s in zip(sets, seeds, strict=True)]
        sensitivity = max(sensitivity, _prediction_gap(model, seq, other, sets))
    return sensitivity


@pytest.mark.parametrize(("norm", "optimizer", "loss", "mu", "kind"), EQUAL_CASES)
def test_batched_equals_sequential(smoke_cohort, norm, optimizer, loss, mu, kind):
    sets = _sets(smoke_cohort, kind)
    model, start, _, _, seq, bat = _train_both(norm, optimizer, loss, mu, sets)
    names = list(model.state_dict())
    for (ps, ms), (pb, mb) in zip(seq, bat, strict=True):
        assert (mb["num_examples"], mb["steps"]) == (ms["num_examples"], ms["steps"])
        assert mb["train_loss"] == pytest.approx(ms["train_loss"], rel=LOSS_RTOL)
        for name, a, b in zip(names, ps, pb, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            if name.endswith("num_batches_tracked"):
                assert a == b, name
            else:
                np.testing.assert_allclose(b, a, rtol=0, atol=PARAM_ATOL, err_msg=name)
        upd_s = np.concatenate([(a - g).ravel() for a, g in zip(ps, start, strict=True)
                                if a.dtype.kind == "f"])
        upd_b = np.concatenate([(b - g).ravel() for b, g in zip(pb, start, strict=True)
                                if b.dtype.kind == "f"])
        assert np.linalg.norm(upd_b - upd_s) <= UPDATE_RTOL * np.linalg.norm(upd_s)
    assert _prediction_gap(model, seq, bat, sets) <= PRED_ATOL_HU


@pytest.mark.parametrize(("norm", "optimizer", "loss", "kind"), AMPLIFIED_CASES)
def test_batched_is_within_rounding_sensitivity_where_training_amplifies_it(
        smoke_cohort, norm, optimizer, loss, kind):
    sets = _sets(smoke_cohort, kind)
    model, start, local, seeds, seq, bat = _train_both(norm, optimizer, loss, 0.0, sets)
    for (_, ms), (_, mb) in zip(seq, bat, strict=True):
        assert (mb["num_examples"], mb["steps"]) == (ms["num_examples"], ms["steps"])
        assert mb["train_loss"] == pytest.approx(ms["train_loss"], rel=1e-3)
    gap = _prediction_gap(model, seq, bat, sets)
    sensitivity = _rounding_sensitivity(model, start, local, seeds, sets, seq)
    assert gap <= 3 * sensitivity + PRED_ATOL_HU, (gap, sensitivity)


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_grouped_network_gives_each_hospital_its_own_gradients(norm):
    torch.manual_seed(0)
    models = [build_unet((8, 16, 32), norm, 1) for _ in range(3)]  # 3 different networks
    x = torch.rand(3, 4, 1, 32, 32)
    y = torch.rand(3, 4, 1, 32, 32) - 0.5
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
              .requires_grad_(True) for n, _ in models[0].named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n].clone() for m in models])
               for n, _ in models[0].named_buffers()}
    # (hospital, B, 1, H, W) → (B, hospital·1, H, W): hospital k in channel k
    stacked_x, stacked_y = (t.permute(1, 0, 2, 3, 4).reshape(4, 3, 32, 32) for t in (x, y))
    out = grouped_forward(models[0], params, buffers, stacked_x)
    losses = (out - stacked_y).abs().mean(dim=(0, 2, 3))
    grads = torch.autograd.grad(losses.sum(), list(params.values()))
    for k, m in enumerate(models):
        m.train()
        want = m(x[k])
        np.testing.assert_allclose(out[:, k : k + 1].detach(), want.detach(), atol=1e-5)
        g_seq = torch.autograd.grad(F.l1_loss(want, y[k]), list(m.parameters()))
        scale = max(float(g.abs().max()) for g in g_seq)
        for name, gs, gb in zip(params, g_seq, grads, strict=True):
            np.testing.assert_allclose(gb[k], gs, rtol=0, atol=1e-5 * scale, err_msg=name)
        for name, b in m.named_buffers():  # BatchNorm running statistics, per hospital
            np.testing.assert_allclose(buffers[name][k], b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizer_steps_as_torch_optim(optimizer):
    torch.manual_seed(0)
    rows = torch.randn(3, 50)
    local = LocalTraining(optimizer=optimizer, lr=0.01)
    mine = _Optimizer(local, rows)
    refs = [torch.nn.Parameter(r.clone()) for r in rows]
    opts = [torch.optim.Adam([p], lr=0.01, eps=ADAM_EPS) if optimizer == "adam"
            else torch.optim.SGD([p], lr=0.01) for p in refs]
    flat = rows.clone()
    for _ in range(5):
        grad = torch.randn(3, 50) * torch.tensor([1.0, 1e-6, 1e-12])[:, None]
        mine.step(flat, grad)
        for p, o, g in zip(refs, opts, grad, strict=True):
            p.grad = g.clone()
            o.step()
    np.testing.assert_array_equal(flat, torch.stack([p.detach() for p in refs]))


def test_smoke_federation_sgd_matches_sequential(smoke_cohort):
    sets = ["federation.optimizer=sgd", "federation.loss=mse", "federation.lr=0.05",
            "attacks.poisoning.enabled=true", "attacks.poisoning.kind=data_noise"]
    seq = run_federation(build_config("smoke", sets=[*sets, "federation.batched_clients=off"]),
                         smoke_cohort)
    bat = run_federation(build_config("smoke", sets=[*sets, "federation.batched_clients=on"]),
                         smoke_cohort)
    assert len(seq.history) == len(bat.history) == 6
    rtol = max(FACTOR * measured("batched", "federations", "sgd_rel"), FLOOR)
    for hs, hb in zip(seq.history, bat.history, strict=True):
        for key in ("mae_hu", "psnr_db", "ssim"):
            assert hb[key] == pytest.approx(hs[key], rel=rtol), (hs, hb)
    assert bat.steps == seq.steps


def test_smoke_federation_default_recipe_agrees(smoke_cohort):
    seq = run_federation(build_config("smoke", sets=["federation.batched_clients=off"]),
                         smoke_cohort)
    bat = run_federation(build_config("smoke", sets=["federation.batched_clients=on"]),
                         smoke_cohort)
    spread = measured("batched", "federations")
    for key in ("mae_hu", "psnr_db", "ssim"):
        assert bat.history[1][key] == pytest.approx(
            seq.history[1][key], rel=FACTOR * spread["default_round1_rel"])
    s, b = seq.history[-1], bat.history[-1]
    assert abs(b["mae_hu"] - s["mae_hu"]) <= FACTOR * spread["default_final_mae_rel"] * s["mae_hu"]
    assert abs(b["psnr_db"] - s["psnr_db"]) <= FACTOR * spread["default_final_psnr_db"]
    assert abs(b["ssim"] - s["ssim"]) <= FACTOR * spread["default_final_ssim"]
    assert b["mae_hu"] < 0.6 * bat.history[0]["mae_hu"]  # it learns as the sequential path
    assert bat.per_center.keys() == seq.per_center.keys()


def test_hospital_level_dp_is_batched_and_reports_public_metadata(smoke_cohort):
    cfg = build_config("smoke", sets=["defenses.dp.enabled=true", "defenses.dp.level=client",
                                      "defenses.dp.noise_multiplier=0.01"])
    model = build_unet((8, 16, 32), "instance", 1)
    sets = [c.train for c in smoke_cohort.centers]
    plan = plan_training(cfg, model, sets)
    assert plan.batched == (0, 1, 2) and plan.reason is None
    start = get_parameters(model)
    _, meta_b = train_round(cfg, model, 1, smoke_cohort, sets, start, plan, lambda: False)
    off = plan_training(build_config("smoke", sets=["federation.batched_clients=off"]),
                        model, sets)
    _, meta_s = train_round(cfg, model, 1, smoke_cohort, sets, start, off, lambda: False)
    assert meta_b == meta_s  # public values only: no training loss leaves a DP hospital


def test_unsupported_cases_fall_back_with_a_reason_and_on_refuses(smoke_cohort, caplog):
    model = build_unet((8, 16, 32), "batch", 1)
    local = LocalTraining(batch_size=6)
    assert "BatchNorm" in unsupported_reason(model, local, [12, 7, 10])
    assert unsupported_reason(model, local, [12, 6, 12]) is None
    assert "two hospitals" in unsupported_reason(model, local, [12])
    assert "precision 'bf16'" in unsupported_reason(model, LocalTraining(precision="bf16"),
                                                    [12, 12])
    sets = _sets(smoke_cohort, "5")[:3]
    cfg = build_config("smoke", sets=["model.norm=batch"])
    plan = plan_training(cfg, model, sets)
    assert plan.batched == () and "BatchNorm" in plan.reason
    with pytest.raises(ConfigError, match="federation.batched_clients = 'on' is not possible "
                                          "here: BatchNorm") as err:
        plan_training(build_config("smoke", sets=["model.norm=batch",
                                                  "federation.batched_clients=on"]),
                      model, sets)
    assert "\n" not in str(err.value)
    dp = ["defenses.dp.enabled=true", "defenses.dp.level=sample",
          "defenses.dp.noise_multiplier=0.5"]
    cfg = build_config("smoke", sets=[*dp, "federation.rounds=1"])
    with caplog.at_level(logging.INFO, logger="engine.federation.inprocess"):
        run_federation(cfg, smoke_cohort)
    assert any("one center after another: patient-level DP-SGD" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ConfigError, match="patient-level DP-SGD"):
        run_federation(build_config("smoke", sets=[*dp, "federation.batched_clients=on"]),
                       smoke_cohort)
    assert batched_slower_reason(torch.device("cpu")) is None
    assert "not measured on cuda" in batched_slower_reason(torch.device("cuda"))


def test_batched_clients_does_not_change_the_config_hash():
    base = config_hash(build_config("smoke"))
    for mode in ("on", "off", "auto"):
        assert config_hash(build_config("smoke", sets=[f"federation.batched_clients={mode}"])) \
            == base
