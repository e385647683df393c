"""The in-process federation with real MONAI, Flower aggregation and SecAgg primitives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import FACTOR, measured

from engine.data.cohort import load_cohort
from engine.federation.inprocess import run_federation
from engine.federation.secagg_encoding import SecAggParams, quantization_error_bound
from engine.federation.server_view import ServerView
from engine.learning.local import LocalTraining, train_local
from engine.learning.model import build_unet, get_parameters
from engine.orchestration.presets import build_config


@pytest.fixture(scope="module")
def smoke_cfg():
    return build_config("smoke")


@pytest.fixture(scope="module")
def smoke_cohort(smoke_cfg):
    return load_cohort(smoke_cfg.data, smoke_cfg.seed)


def test_smoke_preset_learns(smoke_cfg, smoke_cohort):
    result = run_federation(smoke_cfg, smoke_cohort)
    first, last = result.history[0], result.history[-1]
    assert [h["round"] for h in result.history] == list(range(smoke_cfg.federation.rounds + 1))
    assert last["mae_hu"] < 0.6 * first["mae_hu"], result.history
    assert last["psnr_db"] > first["psnr_db"] + 3
    assert set(result.per_center) == {c.name for c in smoke_cohort.centers}


def test_same_seed_same_model_other_seed_differs(smoke_cohort):
    cfg = build_config("smoke", sets=["federation.rounds=1"])
    a = run_federation(cfg, smoke_cohort).final_params
    b = run_federation(cfg, smoke_cohort).final_params
    c = run_federation(build_config("smoke", sets=["federation.rounds=1", "seed=1"]),
                       smoke_cohort).final_params
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_bf16_training_computes_in_bf16_and_learns_within_the_measured_spread(smoke_cohort):
    """bf16 is hardware-dependent: the CPU's bf16 kernels round differently, and Adam with
    InstanceNorm carries that on. Across kernel selections of one machine the final MAE of
    ``smoke`` in bf16 was 6.7 % below to 12.6 % above fp32's (an Intel CPU with AMX: 11 %
    above; tests/golden/spread.json), while round 1 stayed within 0.07 %. Checked here: the
    convolutions run in bf16, round 1 agrees within ``FACTOR`` × its measured spread, bf16
    training learns, and its final MAE is within twice the largest measured distance from
    fp32's (25 %: chaotic, so only gross failures are caught there)."""
    dtypes = set()
    model = build_unet((8, 16, 32), "instance", 1)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    data = smoke_cohort.centers[0].train
    train_local(model, get_parameters(model), data.select(np.arange(4)),
                LocalTraining(precision="bf16", batch_size=4), seed=0)
    hook.remove()
    assert dtypes == {torch.bfloat16}
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = build_config("smoke", sets=[f"federation.precision={precision}",
                                          "federation.batched_clients=off"])
        curves[precision] = [h["mae_hu"] for h in run_federation(cfg, smoke_cohort).history]
    fp32, bf16 = curves["fp32"], curves["bf16"]
    spread = measured("bf16").values()
    round1 = max(abs(v["round1_rel"]) for v in spread)
    final = max(abs(v["final_rel"]) for v in spread)
    assert bf16[1] == pytest.approx(fp32[1], rel=FACTOR * round1)
    assert bf16[-1] < 0.6 * bf16[0]
    assert bf16[-1] == pytest.approx(fp32[-1], rel=2 * final)


def test_secure_aggregation_equals_fedavg_and_hides_uploads(tmp_path, smoke_cohort):
    sets = ["federation.rounds=1"]
    plain = run_federation(build_config("smoke", sets=sets), smoke_cohort, run_dir=tmp_path / "p")
    secure = run_federation(build_config("smoke", sets=[*sets, "defenses.secure_aggregation=true"]),
                            smoke_cohort, run_dir=tmp_path / "s")
    pv, sv = ServerView(tmp_path / "p")[1], ServerView(tmp_path / "s")[1]
    weights = [m["num_examples"] for m in sv.metadata.values()]
    bound = quantization_error_bound(weights, SecAggParams())
    for a, b in zip(plain.final_params, secure.final_params, strict=True):
        assert np.abs(a.astype(np.float64) - b).max() <= bound + 1e-6
    # Same local training, so the true uploads are the plain run's; the server holds noise.
    for client in sv.clients:
        true = np.concatenate([u.ravel() for u in pv.uploads[client]]).astype(np.float64)
        seen = np.concatenate([u.ravel() for u in sv.client_params(client)])
        assert abs(np.corrcoef(true, seen)[0, 1]) < 0.05
        assert sv.uploads[client][0].dtype == np.int64
    assert sv.encoding["kind"] == "secagg" and pv.encoding == {"kind": "plain"}


def test_server_view_records_what_the_server_sees(tmp_path, smoke_cohort):
    cfg = build_config("smoke", sets=["federation.rounds=2", "federation.server_view_rounds=last"])
    result = run_federation(cfg, smoke_cohort, run_dir=tmp_path)
    view = ServerView(tmp_path)
    assert view.rounds == [2]
    r = view[2]
    assert r.clients == [c.name for c in smoke_cohort.centers]
    for a, b in zip(r.aggregate, result.final_params, strict=True):
        np.testing.assert_array_equal(a, b)
    # FedAvg: the aggregate is the example-weighted mean of the uploads.
    n = np.array([r.metadata[c]["num_examples"] for c in r.clients], dtype=np.float64)
    uploads0 = [r.uploads[c][0].astype(np.float64) for c in r.clients]
    mean0 = sum(w * u for w, u in zip(n, uploads0, strict=True)) / n.sum()
    np.testing.assert_allclose(r.aggregate[0], mean0, rtol=1e-5, atol=1e-6)
    assert r.client_update(r.clients[0])[0].shape == r.global_params[0].shape
    with pytest.raises(KeyError, match="recorded rounds: \\[2\\]"):
        view[1]


def test_dp_noise_reaches_the_server_view(tmp_path, smoke_cohort):
    cfg = build_config("smoke", sets=["federation.rounds=1", "defenses.dp.enabled=true",
                                      "defenses.dp.clip_norm=0.5",
                                      "defenses.dp.noise_multiplier=0.01"])
    run_federation(cfg, smoke_cohort, run_dir=tmp_path)
    r = ServerView(tmp_path)[1]
    for c in r.clients:
        norm = np.sqrt(sum((u**2).sum() for u in r.client_update(c)))
        n_params = sum(u.size for u in r.global_params)
        expected_noise = 0.01 * 0.5 * np.sqrt(n_params)
        assert norm <= 0.5 + expected_noise * 1.2
        assert r.metadata[c]["noise_std"] == pytest.approx(0.005)


@pytest.mark.parametrize("aggregator", ["fedmedian", "trimmed_mean", "fedprox"])
def test_other_aggregators_run(aggregator, smoke_cohort):
    sets = ["federation.rounds=1", f"federation.aggregator={aggregator}",
            "federation.fedprox_mu=0.01", "federation.trim_beta=0.34"]
    result = run_federation(build_config("smoke", sets=sets), smoke_cohort)
    assert np.isfinite(result.history[-1]["mae_hu"])
