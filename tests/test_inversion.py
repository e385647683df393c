"""Gradient inversion: the attack must succeed on a model known to be invertible, so that a
weak result on the study's U-Net is a finding, not a bug."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from engine.attacks.inversion import (
    AGGREGATE,
    AttackerPrior,
    GradientInversion,
    InversionPayload,
    dlg,
    dlg_lbfgs,
    inverting_gradients,
)
from engine.attacks.inversion_objective import (
    decode_adam_step,
    sign_hinge,
    simulate_update,
    training_mode_copy,
    unreadable_bound,
    update_distance,
)
from engine.attacks.inversion_scenario import inversion_payloads, inversion_verdict
from engine.core.reconstruction_metrics import reconstruction_metrics, template_metrics
from engine.core.units import hu_to_unit
from engine.data.cohort import attacker_data, control_slices, load_cohort
from engine.data.nifti import save_patient_folder
from engine.data.phantom import example_patient_volume, phantom_patient
from engine.federation.server_view import ServerView
from engine.learning.local import LocalTraining, train_local
from engine.learning.model import build_unet, get_parameters
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

SIZE = 16


class ShallowNet(torch.nn.Module):
    """Conv + sigmoid + fully connected, no normalisation: its gradient encodes the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * SIZE * SIZE, SIZE * SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sigmoid(self.conv(x)).flatten(1)).view(-1, 1, SIZE, SIZE)


def client_payload(local: LocalTraining, n: int = 1):
    torch.manual_seed(0)
    net = ShallowNet()
    truth = phantom_patient(0, 0, 0, image_size=SIZE, n_slices=n)
    mri, ct = torch.from_numpy(truth.mri), torch.from_numpy(hu_to_unit(truth.ct_hu))
    names = list(net.state_dict())
    start = [v.detach().numpy().copy() for v in net.state_dict().values()]
    params = {k: v.detach() for k, v in net.named_parameters()}
    update = simulate_update(net, params, {}, mri, ct, local)
    uploaded = [start[i] + update[k].detach().numpy() for i, k in enumerate(names)]
    flat = np.full((SIZE, SIZE), 0.3, np.float32)
    prior = AttackerPrior(flat, flat, np.zeros((0, 2, SIZE, SIZE), np.float32))
    payload = InversionPayload(net, names, start, uploaded, local, n, SIZE, prior)
    return payload, truth


def score(result, truth):
    return reconstruction_metrics(result.mri, result.ct_unit, truth.mri,
                                  hu_to_unit(truth.ct_hu), truth.mask)


def test_dlg_inverts_a_single_sgd_step_of_an_invertible_model():
    payload, truth = client_payload(LocalTraining(loss="mse", optimizer="sgd", lr=0.1,
                                                  local_epochs=1, batch_size=1))
    result = dlg(iterations=50).reconstruct(payload)
    m = score(result, truth)
    assert m["ssim"] >= 0.8, m
    assert m["ssim_ct"] >= 0.8, m
    assert result.losses[-1] < 1e-2 * result.losses[0]  # the matching loss collapses


def test_random_start_is_far_from_the_original():
    """The metric does not flatter: the attack's random start (one step of 1e-6) scores low."""
    payload, truth = client_payload(LocalTraining(loss="mse", optimizer="sgd", lr=0.1))
    result = inverting_gradients(iterations=1, lr=1e-6, restarts=1).reconstruct(payload)
    assert score(result, truth)["ssim"] < 0.5


def test_batched_restarts_equal_a_restart_loop():
    payload, _ = client_payload(LocalTraining(loss="mse", optimizer="sgd", lr=0.1))
    a = inverting_gradients(iterations=5, restarts=3, batched=True).reconstruct(payload)
    b = inverting_gradients(iterations=5, restarts=3, batched=False).reconstruct(payload)
    np.testing.assert_allclose(a.restart_losses, b.restart_losses, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.mri, b.mri, atol=1e-5)


def test_simulated_sgd_step_is_minus_lr_times_the_gradient():
    torch.manual_seed(1)
    net = ShallowNet()
    x, y = torch.rand(2, 1, SIZE, SIZE), torch.rand(2, 1, SIZE, SIZE)
    params = {k: v.detach() for k, v in net.named_parameters()}
    upd = simulate_update(net, params, {}, x, y,
                          LocalTraining(loss="mse", optimizer="sgd", lr=0.5, batch_size=2))
    net.zero_grad()
    torch.nn.functional.mse_loss(net(x), y).backward()
    for k, p in net.named_parameters():
        torch.testing.assert_close(upd[k], -0.5 * p.grad)


def test_l1_surrogate_gives_the_dummy_ct_a_gradient():
    torch.manual_seed(2)
    net = ShallowNet()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.rand(1, 1, SIZE, SIZE)
    y = torch.rand(1, 1, SIZE, SIZE, requires_grad=True)
    upd = simulate_update(net, params, {}, x, y, LocalTraining(loss="l1", optimizer="sgd"))
    update_distance(upd, {k: torch.zeros_like(v) for k, v in upd.items()}, "l2").backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


@pytest.mark.parametrize("distance", ["l2", "cosine", "cosine_layers"])
def test_distance_is_zero_for_identical_updates(distance):
    u = {"a": torch.randn(3, 3), "b": torch.randn(4)}
    assert float(update_distance(u, u, distance)) == pytest.approx(0.0, abs=1e-6)


def test_matching_pairs_batch_members_in_any_order():
    truth = phantom_patient(0, 1, 3, image_size=32, n_slices=3)
    ct = hu_to_unit(truth.ct_hu)
    m = reconstruction_metrics(truth.mri[::-1], ct[::-1], truth.mri, ct, truth.mask)
    assert m["ssim"] == pytest.approx(1.0) and m["ssim_ct"] == pytest.approx(1.0)
    assert sorted(j for _, j in m["pairs"]) == [0, 1, 2]


def test_run_folder_gets_inversion_summary_and_images(runs_dir):


    cfg = build_config(sets=[
        "data.centers=3", "data.patients_per_center=1", "data.heldout_per_center=1",
        "data.slices_per_patient=2", "data.image_size=32", "model.channels=[4,8]",
        "model.num_res_units=0", "federation.rounds=1", "federation.optimizer=sgd",
        "attacks.inversion.enabled=true", "attacks.inversion.iterations=3",
        "attacks.inversion.restarts=2", "attacks.inversion.snapshot_every=1",
        "attacks.inversion.target_center=all",
    ])
    run = create_run(cfg)
    assert execute(run) is not None, (run.path / "log.txt").read_text()
    inv = json.loads((run.path / "summary.json").read_text())["inversion"]
    for key in ("method", "ssim", "ssim_body", "psnr_db", "ssim_ct", "psnr_db_ct",
                "floor_ssim", "floor_ssim_body", "per_client", "iterations", "restarts",
                "evaluations"):
        assert key in inv
    # Three iterations rebuild nothing, not even the controls: no verdict of safety.
    assert inv["verdict"] == "inconclusive", inv
    cal = inv["calibration"]
    assert not cal["recovered"] and cal["iterations"] == 3 and cal["restarts"] == 2
    assert cal["total"] == len(cal["trials"]) == 3 and cal["rate"] == 0
    assert cal["rate_ci"][0] == 0 and cal["rate_ci"][1] == pytest.approx(0.708, abs=1e-3)
    # The controls keep the target's upload: 2 slices, the federation's SGD recipe.
    assert cal["slices"] == 2 and "2 slices per upload, SGD" in cal["design"]
    assert cal["gain"] == pytest.approx(np.mean([t["gain"] for t in cal["trials"]]))
    assert set(inv["per_client"]) == {"center-0", "center-1", "center-2"}
    for p in inv["per_client"].values():
        assert not p["leak"] and p["reference_patients"] == 1 + 119
        assert p["gain"] == pytest.approx(p["ssim_body"] - p["null_ssim_body"])
    assert inv["null"]["quantile"] == 0.99 and inv["null"]["reference_patients"] == 120
    with np.load(run.path / "inversion" / "center-1.npz") as z:
        assert z["mri"].shape == z["true_mri"].shape == (2, 1, 32, 32)
        assert z["snapshots_mri"].shape == (3, 2, 1, 32, 32)
        assert len(z["losses"]) == 3
    assert (run.path / "inversion" / "center-1.png").stat().st_size > 100


def test_under_secure_aggregation_the_server_inverts_the_rounds_aggregate(runs_dir):
    """Every upload is masked: the attack inverts what the server holds, the aggregate of all
    hospitals' updates (all their slices at once), and its controls are aggregates of the
    same sizes."""
    cfg = build_config(sets=[
        "data.centers=3", "data.patients_per_center=1", "data.heldout_per_center=1",
        "data.slices_per_patient=2", "data.image_size=32", "model.channels=[4,8]",
        "model.num_res_units=0", "federation.rounds=1", "federation.optimizer=sgd",
        "attacks.inversion.enabled=true", "attacks.inversion.iterations=2",
        "attacks.inversion.restarts=1", "attacks.inversion.control_trials=1",
        "attacks.inversion.target_center=0", "defenses.secure_aggregation=true",
    ])
    run = create_run(cfg)
    assert execute(run) is not None, (run.path / "log.txt").read_text()
    rnd = ServerView(run.path)[1]
    assert not rnd.individual_uploads
    prior = AttackerPrior.from_data(phantom_patient(5, 90, 0, image_size=32, n_slices=8))
    (payload,) = inversion_payloads(run.path, cfg, prior)
    assert payload.client == AGGREGATE and payload.groups == (2, 2, 2)
    for got, want in zip(payload.client_params, rnd.aggregate, strict=True):
        np.testing.assert_array_equal(got, want)
    inv = json.loads((run.path / "summary.json").read_text())["inversion"]
    assert inv["observed"] == "aggregate" and set(inv["per_client"]) == {AGGREGATE}
    agg = inv["per_client"][AGGREGATE]
    assert agg["n"] == 6 and agg["reference_patients"] == 3 * (1 + 119)
    cal = inv["calibration"]
    assert cal["slices"] == 6 and "the aggregate of 3 uploads of 2/2/2 slices" in cal["design"]
    with np.load(run.path / "inversion" / f"{AGGREGATE}.npz") as z:
        assert z["mri"].shape == z["true_mri"].shape == (6, 1, 32, 32)
        assert len(set(z["patient_ids"].tolist())) == 3  # one patient of every hospital


def test_aggregate_objective_simulates_every_client_apart():
    """Two clients' two-step SGD updates, averaged: the grouped objective is zero at the true
    slices; read as one client of four slices (four steps) it is not."""
    local = LocalTraining(loss="mse", optimizer="sgd", lr=0.5, local_epochs=1, batch_size=1)
    payload, truth = client_payload(local, n=4)
    net = payload.model
    params = {k: v.detach() for k, v in net.named_parameters()}
    mri, ct = torch.from_numpy(truth.mri), torch.from_numpy(hu_to_unit(truth.ct_hu))
    parts = [simulate_update(net, params, {}, mri[a:b], ct[a:b], local) for a, b in ((0, 1),
                                                                                      (1, 4))]
    names = payload.param_names
    mean = {k: (parts[0][k] * 1 + parts[1][k] * 3) / 4 for k in params}
    uploaded = [payload.global_params[i] + mean[k].detach().numpy()
                for i, k in enumerate(names)]
    attack = GradientInversion(distance="l2", tv_weight=0.0, restarts=1)

    def objective(groups: tuple[int, ...]) -> float:
        p = replace(payload, client_params=uploaded, groups=groups)
        obs = attack.observe(p, torch.device("cpu"))
        fn = attack._compute_objective(p, obs, torch.device("cpu"))(lambda x, y: (x, y))
        return float(fn(mri, ct))

    assert objective((1, 3)) < 1e-10
    assert objective(()) > 1e-3


def test_floor_of_one_template_equals_matching_its_copies():

    truth = phantom_patient(0, 2, 1, image_size=32, n_slices=3)
    ct = hu_to_unit(truth.ct_hu)
    guess_m, guess_c = truth.mri.mean(axis=(0, 1)), ct.mean(axis=(0, 1))
    tiled = reconstruction_metrics(np.broadcast_to(guess_m, truth.mri.shape).copy(),
                                   np.broadcast_to(guess_c, ct.shape).copy(),
                                   truth.mri, ct, truth.mask)
    floor = template_metrics(guess_m, guess_c, truth.mri, ct, truth.mask)
    for key, value in floor.items():
        assert value == pytest.approx(tiled[key])


def test_more_reconstructions_than_slices_pair_only_the_originals():
    truth = phantom_patient(0, 0, 2, image_size=32, n_slices=2)
    ct = hu_to_unit(truth.ct_hu)
    extra = np.concatenate([truth.mri, np.zeros_like(truth.mri)])
    m = reconstruction_metrics(extra, np.concatenate([ct, np.zeros_like(ct)]), truth.mri, ct,
                               truth.mask)
    assert m["n"] == 2 and sorted(i for i, _ in m["pairs"]) == [0, 1]
    assert m["ssim"] == pytest.approx(1.0)


def test_prior_components_span_the_public_slices():
    public = phantom_patient(5, 90, 0, image_size=SIZE, n_slices=6)
    ct = hu_to_unit(public.ct_hu)
    prior = AttackerPrior.from_slices(public.mri, ct)
    assert prior.components.shape == (6, 2, SIZE, SIZE)
    np.testing.assert_allclose(prior.mri, public.mri.mean(axis=(0, 1)), atol=1e-6)
    # Every public slice is the mean plus a combination of the components.
    flat = np.concatenate([public.mri.reshape(6, -1), ct.reshape(6, -1)], axis=1)
    basis = prior.components.reshape(6, -1)
    centred = flat - np.concatenate([prior.mri.ravel(), prior.ct_unit.ravel()])
    coef, *_ = np.linalg.lstsq(basis.T, centred.T, rcond=None)
    np.testing.assert_allclose(basis.T @ coef, centred.T, atol=1e-4)


def test_pca_prior_recovers_a_slice_inside_the_attackers_span():
    """With the target inside the prior's span, searching coefficients instead of pixels
    finds it: the prior narrows the search, the gradient picks the patient."""
    payload, truth = client_payload(LocalTraining(loss="mse", optimizer="sgd", lr=0.1))
    others = [phantom_patient(0, 0, p, image_size=SIZE, n_slices=1) for p in range(1, 8)]
    mri = np.concatenate([truth.mri, *(o.mri for o in others)])
    ct = hu_to_unit(np.concatenate([truth.ct_hu, *(o.ct_hu for o in others)]))
    payload.prior = AttackerPrior.from_slices(mri, ct)
    result = dlg(prior="pca", components=8, init="mean", iterations=60).reconstruct(payload)
    m = score(result, truth)
    floor = reconstruction_metrics(payload.prior.mri[None, None], payload.prior.ct_unit[None, None],
                                   truth.mri, hu_to_unit(truth.ct_hu), truth.mask)
    assert m["ssim"] >= 0.9 > floor["ssim"] + 0.1, (m, floor)



def test_dlg_lbfgs_solves_rosenbrock_where_one_iteration_per_step_sticks():
    def rosenbrock(x: torch.Tensor) -> torch.Tensor:
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    def minimise(inner: int) -> float:
        x = torch.tensor([-1.2, -1.0] * 5, dtype=torch.float64, requires_grad=True)
        opt = dlg_lbfgs([x], inner_iterations=inner)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            f = rosenbrock(x)
            f.backward()
            return f

        for _ in range(100):
            opt.step(closure)
        return float(rosenbrock(x.detach()))

    assert minimise(20) < 1e-8
    assert minimise(1) > 1.0  # the setting DLG must not use: it stops moving


def smooth_unet_sgd_payload(size: int = 16):
    """One plain SGD step of a small MONAI U-Net (tanh, InstanceNorm: twice differentiable,
    as DLG requires) on one phantom slice, uploaded through the real client code."""


    torch.manual_seed(0)
    net = UNet(2, 1, 1, (4, 8, 16), (2, 2), num_res_units=1, act="tanh", norm="instance")
    truth = phantom_patient(0, 0, 0, image_size=size, n_slices=1)
    start = get_parameters(net)
    local = LocalTraining(loss="mse", optimizer="sgd", lr=0.05, batch_size=1)
    trained, _ = train_local(net, start, truth, local, seed=0)
    flat = np.full((size, size), 0.3, np.float32)
    prior = AttackerPrior(flat, flat, np.zeros((0, 2, size, size), np.float32))
    return InversionPayload(net, list(net.state_dict()), start, trained, local, 1, size,
                            prior)


def test_dlg_matching_loss_keeps_falling_on_a_unet_after_20_steps():
    payload = smooth_unet_sgd_payload()
    losses = dlg(iterations=40).reconstruct(payload).losses
    falls = sum(b < a for a, b in zip(losses[19:], losses[20:], strict=False))
    assert falls >= 15 and losses[39] < 0.9 * losses[19], losses[19:]
    # One iteration per step (a line search without evaluations) ends far higher.
    stuck = dlg(iterations=40, inner_iterations=1).reconstruct(payload).losses
    assert losses[39] < 0.5 * stuck[39], (losses[39], stuck[39])


def adam_client_payload():
    """The invertible conv+FC model after one real local Adam step (torch's Adam, the
    client code) on one slice: the upload is ≈ −lr·sign(gradient)."""

    torch.manual_seed(0)
    net = ShallowNet()
    truth = phantom_patient(0, 0, 0, image_size=SIZE, n_slices=1)
    start = get_parameters(net)
    local = LocalTraining(loss="mse", optimizer="adam", lr=0.01, batch_size=1)
    trained, _ = train_local(net, start, truth, local, seed=0)
    flat = np.full((SIZE, SIZE), 0.3, np.float32)
    prior = AttackerPrior(flat, flat, np.zeros((0, 2, SIZE, SIZE), np.float32))
    return InversionPayload(net, list(net.state_dict()), start, trained, local, 1, SIZE,
                            prior), truth


def test_adam_decoding_reads_the_gradient_back_from_a_torch_adam_step():

    torch.manual_seed(3)
    w = torch.nn.Parameter(0.05 * torch.randn(5000))
    g = torch.randn(5000).sign() * torch.logspace(-5, -1, 5000)  # sizes over four decades
    w.grad = g.clone()
    before = w.detach().clone()
    torch.optim.Adam([w], lr=2e-3).step()
    delta = w.detach().double() - before.double()
    assert np.allclose(np.abs(delta.numpy()), 2e-3, rtol=1e-2)  # the step hides the size
    decoded, readable = decode_adam_step(delta.numpy(), w.detach().numpy(), lr=2e-3)
    assert readable.mean() > 0.5
    rel = np.abs(decoded[readable] - g.numpy()[readable]) / np.abs(g.numpy()[readable])
    assert np.percentile(rel, 95) < 0.25
    assert (decoded[~readable] == 0).all()
    # Where the size is unreadable the step still bounds the gradient: right sign, and
    # |g| at least the bound, on every such coordinate (the hinge is zero at the truth).
    bound = unreadable_bound(delta.numpy(), w.detach().numpy(), lr=2e-3)
    assert (bound[readable] == 0).all() and (bound[~readable] != 0).all()
    gt = g.numpy().astype(np.float64)
    assert (np.sign(bound[~readable]) == np.sign(gt[~readable])).all()
    assert (np.abs(gt[~readable]) >= np.abs(bound[~readable])).all()
    assert np.median(np.abs(bound[~readable]) / np.abs(gt[~readable])) > 0.05  # not vacuous
    t = {"w": torch.from_numpy(-gt)}  # the simulated step of lr 1 at the truth: −g
    assert float(sign_hinge(t, {"w": torch.from_numpy(-bound)})) == 0.0
    wrong = float(sign_hinge({"w": -t["w"]}, {"w": torch.from_numpy(-bound)}))
    assert wrong == pytest.approx(1.0)  # every sign wrong


def test_adam_aware_inversion_rebuilds_a_one_step_adam_upload():
    payload, truth = adam_client_payload()
    decoded = dlg(iterations=50).reconstruct(payload)
    assert decoded.objective == "adam_decoded"
    m = score(decoded, truth)
    assert m["ssim"] >= 0.8 and m["ssim_ct"] >= 0.8, m
    # Differentiating through the simulated Adam step instead gives the dummies almost no
    # gradient: the same budget rebuilds nothing.
    naive = dlg(iterations=50, adam="simulate").reconstruct(payload)
    assert naive.objective == "simulated" and score(naive, truth)["ssim"] < 0.3


def test_batchnorm_is_simulated_in_training_mode():
    """A BatchNorm model's simulated SGD step equals the real client's step (which trains on
    batch statistics), not the step on the global running statistics."""

    torch.manual_seed(4)
    net = build_unet((4, 8), "batch", 0)
    data = phantom_patient(0, 1, 0, image_size=16, n_slices=2)
    start = get_parameters(net)
    sim_net = training_mode_copy(net)  # before the client trains ``net`` in place
    local = LocalTraining(loss="mse", optimizer="sgd", lr=0.1, batch_size=2)
    trained, _ = train_local(net, start, data, local, seed=0)
    names = list(net.state_dict())
    params = {k: v.detach() for k, v in sim_net.named_parameters()}
    mri, ct = torch.from_numpy(data.mri), torch.from_numpy(hu_to_unit(data.ct_hu))
    sim = simulate_update(sim_net, params, {}, mri, ct, local)
    real = {n: torch.as_tensor(t - s) for n, t, s in zip(names, trained, start, strict=True)}
    for k in params:
        torch.testing.assert_close(sim[k], real[k], rtol=1e-3, atol=1e-6)


def _folder_root(tmp_path, names: list[str]):
    """A SynthRAD2023-layout root of small phantom patients named ``names``."""


    root = tmp_path / "brain"
    for k, name in enumerate(names):
        volume = example_patient_volume(0, ord(name[2]) - ord("A"), k, image_size=32,
                                        n_slices=8)
        save_patient_folder(replace(volume, patient_id=name), root / name)
    return root


def test_attacker_data_come_from_the_federations_source_and_no_hospital(tmp_path):

    names = ["1BA001", "1BA002", "1BA003", "1BB001", "1BB002", "1BC001", "1BC002"]
    root = _folder_root(tmp_path, names)
    cfg = build_config(sets=["data.source=nifti", f"data.path={root}", "data.centers=2",
                             "data.patients_per_center=1", "data.heldout_per_center=1",
                             "data.slices_per_patient=2", "data.image_size=32"])
    cohort = load_cohort(cfg.data, cfg.seed)
    federation = {p for c in cohort.centers for p in (*c.train.patients, *c.test.patients)}
    assert federation == {"1BA001", "1BA002", "1BB001", "1BB002"}
    attacker = attacker_data(cfg.data, cfg.seed)
    assert set(attacker.public.patients) | set(attacker.control.patients) == {
        "1BA003", "1BC001", "1BC002"}
    assert not set(attacker.control.patients) & set(attacker.public.patients)
    # The floor is the attacker's own patients' mean, on the federation's slice protocol.
    prior = AttackerPrior.from_data(attacker.public)
    np.testing.assert_allclose(prior.mri, attacker.public.mri.mean(axis=(0, 1)), atol=1e-6)
    assert prior.mri.shape == (32, 32)

    tight = build_config(sets=["data.source=nifti", f"data.path={root}", "data.centers=3",
                               "data.patients_per_center=1", "data.heldout_per_center=1"])
    with pytest.raises(ValueError, match=r"1 patient folder\(s\) .* at least 3 are needed"):
        attacker_data(tight.data, tight.seed)


def test_phantom_attacker_patients_are_none_of_the_federations():

    cfg = build_config("smoke")
    cohort = load_cohort(cfg.data, cfg.seed)
    federation = {p for c in cohort.centers for p in (*c.train.patients, *c.test.patients)}
    attacker = attacker_data(cfg.data, cfg.seed)
    assert len(attacker.public) >= 160 and len(attacker.control) == control_slices(cfg.data)
    assert not (set(attacker.public.patients) | set(attacker.control.patients)) & federation
    assert not set(attacker.control.patients) & set(attacker.public.patients)


@pytest.mark.parametrize("calibration", [None, {"recovered": False}, {"recovered": True}])
def test_no_leak_needs_a_recovered_control(calibration):

    per = {"center-0": {"leak": False}, "center-1": {"leak": False}}
    expected = "no_leak" if calibration and calibration["recovered"] else "inconclusive"
    assert inversion_verdict(per, calibration) == expected
    per["center-1"]["leak"] = True  # one hospital's upload leaks: a leak either way
    assert inversion_verdict(per, calibration) == "leak"
