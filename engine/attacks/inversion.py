"""Gradient inversion by a curious server: DLG and Inverting Gradients on the server view.

Scenario and attack are separate (as in ``breaching``): :func:`inversion_payload` takes one
client's upload in one recorded round — read through the server view, so under secure
aggregation it is a masked upload — plus what the protocol makes public (architecture, the
global model, the client's local training recipe, its reported number of examples). Every
attack has the same shape, ``attack.reconstruct(payload) → InversionResult``.

The attacker does not see the client's shuffling, so it simulates the client's local
training on dummy data with a fixed batch order (as ``breaching`` does), differentiably with
``torch.func``, and optimises the dummy MRI *and* dummy CT so that the simulated update
matches the observed one. For a single local SGD step this is exactly gradient matching.

With the L1 training loss the parameter gradient depends on the CT only through
sign(f(x) − y), so a dummy CT gets exactly zero gradient; the attacker simulates training
with a smooth surrogate ``sqrt(d² + ε)`` instead (and can recover the CT only through that
sign pattern). Restarts are batched in one pass with ``torch.func.vmap``.

The attacker may hold a public cohort of the same kind (:class:`AttackerPrior`): its mean
slices are the trivial-guess floor and the ``mean`` start; with ``prior="pca"`` the search runs
over the coefficients of the cohort's principal components instead of over pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, grad_and_value, vmap

from engine.federation.client import LocalTraining
from engine.model import NDArrays

SMOOTH_L1_EPS = 1e-4


# --------------------------------------------------------------------------- payload


@dataclass
class AttackerPrior:
    """Statistics of a public cohort the attacker holds (not the federation's patients).

    Attributes:
        mri, ct_unit: ``(H, W)`` mean slices (MRI in [0, 1], CT in normalised units).
        components: ``(K, 2, H, W)`` principal components of the paired ``[MRI, CT]``
            slices, largest first, each scaled by its standard deviation (so a plausible
            slice is ``mean + Σ z_k · component_k`` with ``z ~ N(0, 1)``).
    """

    mri: np.ndarray
    ct_unit: np.ndarray
    components: np.ndarray

    @classmethod
    def from_slices(cls, mri: np.ndarray, ct_unit: np.ndarray,
                    max_components: int = 128) -> AttackerPrior:
        """Mean and principal components of ``(N, 1, H, W)`` paired slices."""
        n, _, h, w = mri.shape
        flat = np.concatenate([mri.reshape(n, -1), ct_unit.reshape(n, -1)], axis=1)
        mean = flat.mean(axis=0)
        _, sing, vt = np.linalg.svd(flat - mean, full_matrices=False)
        k = min(max_components, len(sing))
        comps = vt[:k] * (sing[:k, None] / np.sqrt(max(n - 1, 1)))
        return cls(mri=mean[: h * w].reshape(h, w).astype(np.float32),
                   ct_unit=mean[h * w:].reshape(h, w).astype(np.float32),
                   components=comps.reshape(k, 2, h, w).astype(np.float32))


@dataclass
class InversionPayload:
    """What the server holds about one client's upload (and nothing about its data).

    Attributes:
        model: the architecture (weights are replaced by ``global_params``).
        param_names: ``state_dict`` names matching the arrays.
        global_params: the global model sent at the start of the round.
        client_params: the server's reading of the client's upload.
        local: the client's local training recipe (public protocol).
        num_examples: the count the client reported, i.e. how many slices to rebuild.
        image_size: slice size in pixels.
        prior: what the attacker learnt from data it plausibly holds (mean images for the
            ``mean`` initialisation and the floor; principal components for ``prior=pca``).
    """

    model: torch.nn.Module
    param_names: list[str]
    global_params: NDArrays
    client_params: NDArrays
    local: LocalTraining
    num_examples: int
    image_size: int
    prior: AttackerPrior
    round: int = 0
    client: str = ""


# --------------------------------------------------------------------------- results


@dataclass
class InversionResult:
    """Best reconstruction and its history.

    Attributes:
        mri: ``(N, 1, H, W)`` reconstructed MRI in [0, 1].
        ct_unit: ``(N, 1, H, W)`` reconstructed CT in normalised CT units.
        losses: matching loss of the chosen restart per iteration.
        snapshots_mri / snapshots_ct_unit: ``(S, N, 1, H, W)`` every ``snapshot_every`` its:
            the restart with the lowest loss at that iteration; the last frame is the result.
        restart_losses: final matching loss of every restart (the best one is kept).
    """

    mri: np.ndarray
    ct_unit: np.ndarray
    losses: list[float] = field(default_factory=list)
    snapshots_mri: np.ndarray | None = None
    snapshots_ct_unit: np.ndarray | None = None
    snapshot_iterations: list[int] = field(default_factory=list)
    restart_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    iterations: int = 0


# --------------------------------------------------------------------------- simulation


def _training_loss(name: str):
    if name == "mse":
        return lambda pred, y: ((pred - y) ** 2).mean()
    # L1 surrogate: differentiable in y almost everywhere, so the dummy CT can move.
    return lambda pred, y: torch.sqrt((pred - y) ** 2 + SMOOTH_L1_EPS).mean()


def simulate_update(model: torch.nn.Module, params: dict[str, torch.Tensor],
                    buffers: dict[str, torch.Tensor], mri: torch.Tensor, ct: torch.Tensor,
                    local: LocalTraining) -> dict[str, torch.Tensor]:
    """The client's local training on ``(N, 1, H, W)`` dummies, differentiable in the data.

    Batches are taken in a fixed order every epoch; SGD and Adam are simulated exactly
    (fresh optimiser state, as clients keep none between rounds). Returns θ_end − θ_start.
    """
    loss_fn = _training_loss(local.loss)

    def batch_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = loss_fn(functional_call(model, (p, buffers), (x,)), y)
        if local.fedprox_mu > 0:
            out = out + local.fedprox_mu / 2 * sum(((p[k] - params[k]) ** 2).sum() for k in p)
        return out

    p = dict(params)
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p.items()}
    step, n, bs = 0, len(mri), local.batch_size
    b1, b2, eps = 0.9, 0.999, 1e-8
    for _ in range(local.local_epochs):
        for s in range(0, n, bs):
            g = grad(batch_loss)(p, mri[s : s + bs], ct[s : s + bs])
            step += 1
            if local.optimizer == "sgd":
                p = {k: p[k] - local.lr * g[k] for k in p}
                continue
            m = {k: b1 * m[k] + (1 - b1) * g[k] for k in p}
            v2 = {k: b2 * v2[k] + (1 - b2) * g[k] ** 2 for k in p}
            c1, c2 = 1 - b1**step, 1 - b2**step
            # +eps inside the sqrt keeps its derivative finite where a gradient is exactly 0.
            p = {k: p[k] - local.lr * (m[k] / c1) / (torch.sqrt(v2[k] / c2 + 1e-16) + eps)
                 for k in p}
    return {k: p[k] - params[k] for k in p}


def update_distance(sim: dict[str, torch.Tensor], obs: dict[str, torch.Tensor],
                    distance: str) -> torch.Tensor:
    """``l2`` (DLG): Σ‖sim − obs‖² / Σ‖obs‖² (DLG's squared L2, divided by a constant so that
    L-BFGS's unit step suits updates of any size); ``cosine`` (IG): 1 − cos over all
    parameters; ``cosine_layers``: mean over parameter tensors of 1 − cos."""
    if distance == "l2":
        scale = sum((obs[k] ** 2).sum() for k in obs) + 1e-30
        return sum(((sim[k] - obs[k]) ** 2).sum() for k in obs) / scale
    if distance == "cosine":
        dot = sum((sim[k] * obs[k]).sum() for k in obs)
        ns = torch.sqrt(sum((sim[k] ** 2).sum() for k in obs) + 1e-20)
        no = torch.sqrt(sum((obs[k] ** 2).sum() for k in obs) + 1e-20)
        return 1 - dot / (ns * no)
    terms = [1 - (sim[k] * obs[k]).sum() / (sim[k].norm() * obs[k].norm() + 1e-20) for k in obs]
    return torch.stack(terms).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of ``(..., H, W)``."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


# --------------------------------------------------------------------------- attacks


@dataclass
class GradientInversion:
    """Optimisation-based inversion of one client's update (DLG and Inverting Gradients).

    Args:
        optimizer: ``lbfgs`` (DLG) or ``adam`` (Inverting Gradients).
        distance: ``l2`` | ``cosine`` | ``cosine_layers``.
        iterations: optimiser steps (L-BFGS: outer steps of ``max_iter=1``).
        lr: step size (L-BFGS 1.0 as DLG; Adam 0.1 as IG).
        restarts: independent starts optimised together; the lowest final loss wins.
        tv_weight: total-variation prior on the dummy MRI and CT (0 = none).
        init: ``random`` (uniform noise; with ``prior=pca`` random coefficients) or ``mean``
            (the attacker's population template).
        prior: ``none`` (search every pixel) or ``pca`` (search only slices spanned by the
            first ``components`` principal components of the attacker's public cohort: a
            linear generative prior, as GAN-prior attacks use a generator).
        components: number of principal components searched with ``prior=pca`` (1…128).
        box: clamp the dummies to their valid range [0, 1] after each step.
        batched: optimise restarts in one vmapped pass (False: one restart after another).
        snapshot_every: keep the chosen restart's images every k iterations (0 = never).
        seed: random initialisation seed.
        signed: step on the sign of the image gradient (IG's "signed Adam").
        decay: Adam learning rate ×0.1 at 3/8, 5/8 and 7/8 of the iterations (as IG).
    """

    optimizer: str = "adam"
    distance: str = "cosine"
    iterations: int = 1000
    lr: float = 0.1
    restarts: int = 4
    tv_weight: float = 0.01
    init: str = "random"
    prior: str = "none"
    components: int = 40
    box: bool = True
    batched: bool = True
    snapshot_every: int = 0
    seed: int = 0
    signed: bool = False
    decay: bool = False

    def reconstruct(self, payload: InversionPayload) -> InversionResult:
        t0 = time.perf_counter()
        model = payload.model
        device = next(model.parameters()).device
        model.eval()  # InstanceNorm has no running statistics; BatchNorm uses the global ones
        names = [n for n, _ in model.named_parameters()]
        by_name = dict(zip(payload.param_names, payload.global_params, strict=True))
        client = dict(zip(payload.param_names, payload.client_params, strict=True))
        params = {n: torch.as_tensor(np.asarray(by_name[n], np.float32)).to(device)
                  for n in names}
        observed = {n: torch.as_tensor(np.nan_to_num(np.asarray(client[n], np.float64)
                                                     - by_name[n]), dtype=torch.float32)
                    .to(device) for n in names}
        buffers = {n: torch.as_tensor(np.asarray(by_name[n])).to(device)
                   for n, _ in model.named_buffers() if n in by_name}
        images, variables = self._search_space(payload, device)

        def objective(*v: torch.Tensor) -> torch.Tensor:
            x, y = images(*v)
            sim = simulate_update(model, params, buffers, x, y, payload.local)
            loss = update_distance(sim, observed, self.distance)
            if self.tv_weight:
                loss = loss + self.tv_weight * (total_variation(x) + total_variation(y))
            return loss

        argnums = tuple(range(len(variables)))
        if self.batched:
            value_and_grads = vmap(_value_and_grad(objective, argnums))
        else:
            single = _value_and_grad(objective, argnums)

            def value_and_grads(*vs: torch.Tensor):
                outs = [single(*v) for v in zip(*vs, strict=True)]
                return (torch.stack([o[0] for o in outs]),
                        tuple(torch.stack([o[1][i] for o in outs]) for i in argnums))

        for v in variables:
            v.requires_grad_(True)
        opt = (torch.optim.LBFGS(variables, lr=self.lr, max_iter=1, history_size=100,
                                 line_search_fn="strong_wolfe")
               if self.optimizer == "lbfgs" else torch.optim.Adam(variables, lr=self.lr))
        milestones = [int(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        schedule = (torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
                    if self.decay and self.optimizer == "adam" else None)
        history: list[np.ndarray] = []
        snaps_m, snaps_c, snap_its = [], [], []
        last = torch.zeros(self.restarts)

        def closure() -> torch.Tensor:
            nonlocal last
            opt.zero_grad(set_to_none=True)
            values, grads = value_and_grads(*(v.detach() for v in variables))
            for v, g in zip(variables, grads, strict=True):
                v.grad = g.sign() if self.signed else g
            last = values.detach()
            return values.sum()

        def current(restart: int) -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                x, y = images(*(v[restart].detach() for v in variables))
            return x.cpu().numpy().clip(0, 1), y.cpu().numpy().clip(0, 1)

        for it in range(self.iterations):
            opt.step(closure)
            if schedule is not None:
                schedule.step()
            if self.box and self.prior == "none":
                with torch.no_grad():
                    for v in variables:
                        v.clamp_(0, 1)
            history.append(last.cpu().numpy().copy())
            if self.snapshot_every and (it % self.snapshot_every == 0
                                        or it == self.iterations - 1):
                snap_m, snap_c = current(int(torch.nan_to_num(last, nan=np.inf).argmin()))
                snaps_m.append(snap_m)
                snaps_c.append(snap_c)
                snap_its.append(it)
        with torch.no_grad():
            final, _ = value_and_grads(*(v.detach() for v in variables))
        final = torch.nan_to_num(final, nan=np.inf).cpu()
        best = int(final.argmin())
        losses = np.array(history)[:, best].tolist() if history else []
        mri, ct = current(best)
        if snaps_m:  # the last frame is the result, even if another restart led before
            snaps_m[-1], snaps_c[-1] = mri, ct
        return InversionResult(
            mri=mri, ct_unit=ct,
            losses=[float(v) for v in losses],
            snapshots_mri=np.stack(snaps_m) if snaps_m else None,
            snapshots_ct_unit=np.stack(snaps_c) if snaps_c else None,
            snapshot_iterations=snap_its,
            restart_losses=[float(v) for v in final],
            seconds=time.perf_counter() - t0,
            iterations=self.iterations,
        )

    def _search_space(self, payload: InversionPayload, device: torch.device):
        """``(images, variables)``: the optimised leaf tensors (leading dim = restarts) and
        the map from one restart's slice of them to ``(N, 1, H, W)`` dummy MRI and CT."""
        gen = torch.Generator().manual_seed(self.seed)
        n, size = payload.num_examples, payload.image_size
        prior = payload.prior
        if self.prior == "pca":
            k = min(self.components, len(prior.components))
            basis = torch.as_tensor(prior.components[:k].reshape(k, -1)).to(device)
            mean = torch.as_tensor(np.stack([prior.mri, prior.ct_unit]).reshape(-1)).to(device)
            scale = 1.0 if self.init == "random" else 0.05
            z = (scale * torch.randn((self.restarts, n, k), generator=gen)).to(device)

            def decode(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                both = (mean + latent @ basis).clamp(0, 1).reshape(n, 2, size, size)
                return both[:, :1], both[:, 1:]

            return decode, [z]
        shape = (self.restarts, n, 1, size, size)
        if self.init == "mean":
            noise = 0.05 * torch.randn(shape, generator=gen)
            mri = torch.as_tensor(prior.mri) + noise
            ct = torch.as_tensor(prior.ct_unit) + noise
            return _identity, [mri.clamp(0, 1).to(device), ct.clamp(0, 1).to(device)]
        return _identity, [torch.rand(shape, generator=gen).to(device),
                           torch.rand(shape, generator=gen).to(device)]


def _identity(mri: torch.Tensor, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return mri, ct


def _value_and_grad(objective, argnums: tuple[int, ...]):
    """``(*v) → (value, grads w.r.t. v)`` as a torch.func transform (vmappable)."""
    def fn(*v: torch.Tensor):
        grads, value = grad_and_value(objective, argnums=argnums)(*v)
        return value, grads

    return fn


def dlg(**overrides: Any) -> GradientInversion:
    """DLG (Zhu et al. 2019): L-BFGS (lr 1), squared-L2 matching, random start, no prior."""
    return GradientInversion(**({"optimizer": "lbfgs", "distance": "l2", "iterations": 300,
                                 "lr": 1.0, "restarts": 1, "tv_weight": 0.0, "box": False}
                                | overrides))


def inverting_gradients(**overrides: Any) -> GradientInversion:
    """Inverting Gradients (Geiping et al. 2020): cosine, signed Adam lr 0.1 with step decay,
    TV prior, box constraints, restarts."""
    return GradientInversion(**({"optimizer": "adam", "distance": "cosine", "iterations": 1000,
                                 "lr": 0.1, "restarts": 4, "tv_weight": 0.01, "box": True,
                                 "signed": True, "decay": True} | overrides))


# --------------------------------------------------------------------------- scenario


def attacker_prior(cfg: Any, min_slices: int = 160) -> AttackerPrior:
    """What the attacker learns from a public cohort: mean slices and principal components.

    The cohort is phantom patients from another seed and four scanner profiles that are not
    the federation's (data of the same kind that an attacker plausibly holds), sampled with
    the federation's slice protocol; at least ``min_slices`` slices.
    """
    from engine.data.phantom import phantom_patient
    from engine.data.preprocess import hu_to_unit
    from engine.data.types import SliceSet

    d = cfg.data
    profiles = 4
    per_profile = max(2, -(-min_slices // (profiles * d.slices_per_patient)))
    slices = SliceSet.concat([
        phantom_patient(cfg.seed + 1_000_003, 90 + c, p, image_size=d.image_size,
                        n_slices=d.slices_per_patient)
        for c in range(profiles) for p in range(per_profile)
    ])
    return AttackerPrior.from_slices(slices.mri, hu_to_unit(slices.ct_hu))


def pick_round(recorded: list[int], target: str | int) -> int:
    if not recorded:
        raise ValueError("the run has no server view to attack; record rounds with "
                         "federation.server_view_rounds")
    if target == "first":
        return recorded[0]
    if target == "last":
        return recorded[-1]
    if target not in recorded:
        raise ValueError(f"attacks.inversion.target_round = {target} was not recorded; "
                         f"recorded rounds: {recorded}")
    return int(target)


def inversion_payloads(run_dir: Any, cfg: Any) -> list[InversionPayload]:
    """One payload per targeted client, read from the run's server view."""
    from engine.federation.inprocess import build_model, local_training_of
    from engine.federation.server_view import ServerView

    inv = cfg.attacks.inversion
    view = ServerView(run_dir)
    rnd = view[pick_round(view.rounds, inv.target_round)]
    clients = rnd.clients if inv.target_center == "all" else [rnd.clients[inv.target_center]]
    prior = attacker_prior(cfg)
    payloads = []
    for c in clients:
        reported = int(rnd.metadata[c]["num_examples"])
        payloads.append(InversionPayload(
            model=build_model(cfg), param_names=rnd.param_names,
            global_params=rnd.global_params, client_params=rnd.client_params(c),
            local=local_training_of(cfg),
            num_examples=reported if inv.batch_size == "auto" else inv.batch_size,
            image_size=cfg.data.image_size, prior=prior,
            round=rnd.round, client=c,
        ))
    return payloads


def attack_from_config(inv: Any, seed: int = 0) -> GradientInversion:
    """The attack described by ``attacks.inversion`` (method defaults filled in)."""
    factory = dlg if inv.method == "dlg" else inverting_gradients
    knobs = {"iterations": inv.iterations, "restarts": inv.restarts, "init": inv.init,
             "prior": inv.prior, "components": inv.components,
             "snapshot_every": inv.snapshot_every, "seed": seed}
    knobs |= {k: v for k, v in (("lr", inv.lr), ("tv_weight", inv.tv_weight),
                                ("distance", inv.distance)) if v is not None}
    return factory(**knobs)


def run_inversion(run_dir: Any, cfg: Any, cohort: Any,
                  progress: Any = lambda _msg: None) -> dict[str, Any]:
    """Attack the targeted clients of a finished run; store images; return ``inversion``.

    The originals (each client's training slices) are used only to score the result.
    """
    from pathlib import Path

    from engine.data.preprocess import hu_to_unit
    from engine.metrics import reconstruction_metrics, template_metrics
    from engine.render import save_png, to_gray

    inv = cfg.attacks.inversion
    out = Path(run_dir) / "inversion"
    out.mkdir(exist_ok=True)
    attack = attack_from_config(inv, cfg.seed)
    truth_by_name = {c.name: c.train for c in cohort.centers}
    per_client: dict[str, Any] = {}
    for payload in inversion_payloads(run_dir, cfg):
        progress(f"inverting {payload.client}'s upload of round {payload.round} "
                 f"({payload.num_examples} slices, {attack.iterations} iterations)")
        result = attack.reconstruct(payload)
        truth = truth_by_name[payload.client]
        true_ct = hu_to_unit(truth.ct_hu)
        metrics = reconstruction_metrics(result.mri, result.ct_unit, truth.mri, true_ct,
                                         truth.mask)
        floor = template_metrics(payload.prior.mri, payload.prior.ct_unit, truth.mri, true_ct,
                                 truth.mask)
        per_client[payload.client] = {
            **{k: v for k, v in metrics.items() if k != "pairs"},
            "floor_ssim": floor["ssim"], "floor_ssim_body": floor["ssim_body"],
            "floor_ssim_ct": floor["ssim_ct"], "round": payload.round,
            "seconds": round(result.seconds, 2), "final_loss": result.losses[-1],
            "restart_losses": result.restart_losses,
        }
        pairs = metrics["pairs"]
        np.savez_compressed(
            out / f"{payload.client}.npz", mri=result.mri, ct_unit=result.ct_unit,
            true_mri=truth.mri, true_ct_unit=true_ct, mask=truth.mask,
            patient_ids=truth.patient_ids.astype(str),
            pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2),
            prior_mri=payload.prior.mri, prior_ct_unit=payload.prior.ct_unit,
            losses=np.array(result.losses),
            snapshots_mri=(result.snapshots_mri if result.snapshots_mri is not None
                           else np.zeros((0,))),
            snapshots_ct_unit=(result.snapshots_ct_unit if result.snapshots_ct_unit is not None
                               else np.zeros((0,))),
            snapshot_iterations=np.array(result.snapshot_iterations),
        )
        i, j = pairs[0]
        row = np.concatenate([to_gray(truth.mri[j, 0], 0, 1), to_gray(result.mri[i, 0], 0, 1),
                              to_gray(true_ct[j, 0], 0.2, 0.5),
                              to_gray(result.ct_unit[i, 0], 0.2, 0.5)], axis=1)
        save_png(row, out / f"{payload.client}.png", scale=max(1, 128 // cfg.data.image_size))
    keys = ("ssim", "ssim_body", "psnr_db", "ssim_ct", "psnr_db_ct", "ssim_coarse",
            "floor_ssim", "floor_ssim_body")
    return {
        "method": inv.method,
        **{k: float(np.mean([p[k] for p in per_client.values()])) for k in keys},
        "per_client": per_client,
        "iterations": attack.iterations,
        "restarts": attack.restarts,
    }
