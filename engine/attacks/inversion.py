"""Gradient inversion by a curious server: DLG and Inverting Gradients on the server view.

Scenario and attack are separate (as in ``breaching``): :func:`inversion_payloads` takes what
the server holds of one recorded round — each client's upload, or under secure aggregation,
where every upload is masked, only the round's aggregate (a multi-image inversion of every
client's slices at once) — plus what the protocol makes public (architecture, the global
model, the clients' local training recipe, their reported numbers of examples) and what the
attacker holds itself (:class:`AttackerPrior`). Every attack has the same shape,
``attack.reconstruct(payload) → InversionResult``, split into the objective, the trial (the
optimisation of all restarts) and the selection of the best restart.

The attacker does not see the client's shuffling, so it simulates the client's local
training on dummy data with a fixed batch order (as ``breaching`` does), differentiably with
``torch.func``, in the mode the client trained in (BatchNorm on batch statistics), and
optimises the dummy MRI *and* dummy CT so that the simulated update matches the observed one.
For a single local SGD step this is exactly gradient matching.

Two properties of the study's recipe need an attacker that knows them:

* **L1 loss**: the parameter gradient depends on the CT only through sign(f(x) − y), so a
  dummy CT gets exactly zero gradient; the attacker simulates training with a smooth
  surrogate ``sqrt(d² + ε)`` instead (and can recover the CT only through that sign pattern).
* **Adam**: one fresh Adam step moves each parameter by −lr·g/(|g| + ε) ≈ −lr·sign(g), so
  differentiating a simulated Adam step gives the dummies almost no gradient. But the size of
  g survives in how far |Δ| falls short of lr (by lr·ε/|g|), which a float32 upload resolves
  for most parameters: :func:`decode_adam_step` reads the gradient back, and the attack then
  matches gradients on the coordinates it could read (``adam="decode"``, the default). Those
  it cannot read (large gradients, or weights whose float32 spacing is coarse) carry much of
  the norm; their step still gives the gradient's sign and a lower bound on its size
  (:func:`unreadable_bound`): a hinge term (``sign_weight``) asks the simulated gradient to
  reach that bound with that sign. With several local Adam steps the update is simulated
  through every step instead.

**Verdict.** An upload leaks when its reconstruction passes
:func:`engine.core.metrics.leak_test`: it beats, by a margin and the null's upper quantile,
what the same reconstruction scores against unrelated patients' slices under the same
matching. A reconstruction that does not shows a leak-free *target* only if the same attack,
at the same budget, rebuilds uploads of the target's own difficulty with only the network's
normalisation removed (:func:`calibrate`); otherwise the verdict is ``inconclusive``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest
from torch.func import functional_call, grad, grad_and_value, vmap

from engine.core.config import ExperimentConfig, InversionConfig
from engine.core.metrics import (
    LEAK_MARGIN,
    NULL_DRAWS,
    NULL_QUANTILE,
    leak_test,
    reconstruction_metrics,
    template_metrics,
)
from engine.core.render import save_png, to_gray
from engine.core.types import NDArrays
from engine.core.units import hu_to_unit
from engine.data.cohort import AttackerData, pooled_reference_patients, reference_patients
from engine.data.types import Cohort, SliceSet
from engine.federation.aggregators import FedAvg
from engine.federation.server_view import ServerView
from engine.learning.local import ADAM_EPS, LocalTraining, train_local
from engine.learning.model import build_model, build_unet, get_parameters, select_device

SMOOTH_L1_EPS = 1e-4
# The per-client key (and file stem) of the round's aggregate, attacked under secure
# aggregation where the server holds no individual upload.
AGGREGATE = "aggregate"
# A client leaks when engine.core.metrics.leak_test says so (its reconstruction beats the
# permutation null by LEAK_MARGIN and the null's upper quantile); the calibration control
# must leak by the same rule.
VERDICTS = ("leak", "no_leak", "inconclusive")
# Adam decoding trusts a coordinate when lr − |Δ| spans at least this many float32 spacings
# of the uploaded parameter (the read-back size is then within ~25 %).
DECODE_MIN_SPACINGS = 4.0


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

    @classmethod
    def from_data(cls, slices: SliceSet) -> AttackerPrior:
        return cls.from_slices(slices.mri, hu_to_unit(slices.ct_hu))


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
        groups: when ``client_params`` is an aggregate (secure aggregation), the reported
            number of examples of each client it averages (FedAvg weights); the dummies are
            split into these groups, each trained as its client trained, and averaged.
            Empty: one client's upload.
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
    groups: tuple[int, ...] = ()


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
        evaluations: objective-and-gradient evaluations spent (per restart).
        objective: ``simulated`` (the local training simulated step by step) or
            ``adam_decoded`` (gradient matching against the gradient read back from a
            one-step Adam update).
        readable_fraction: share of the upload's coordinates the objective matched (below 1
            when Adam decoding could not read a coordinate).
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
    evaluations: int = 0
    objective: str = "simulated"
    readable_fraction: float = 1.0


# --------------------------------------------------------------------------- simulation


def _training_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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
    b1, b2 = 0.9, 0.999
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
            # +1e-16 inside the sqrt keeps its derivative finite where a gradient is exactly 0.
            p = {k: p[k] - local.lr * (m[k] / c1) / (torch.sqrt(v2[k] / c2 + 1e-16) + ADAM_EPS)
                 for k in p}
    return {k: p[k] - params[k] for k in p}


def decode_adam_step(delta: np.ndarray, uploaded: np.ndarray, lr: float,
                     eps: float = ADAM_EPS) -> tuple[np.ndarray, np.ndarray]:
    """The gradient a one-step Adam update was made from, read back through Adam's ε.

    One fresh Adam step moves a parameter by Δ = −lr·g/(|g| + ε), so |g| = ε·|Δ|/(lr − |Δ|):
    the size Adam normalises away survives in how far |Δ| falls short of lr.

    Args:
        delta: the observed update (uploaded − global), any shape, float64.
        uploaded: the uploaded parameter values (their float32 spacing bounds how finely
            lr − |Δ| can be read).
        lr, eps: the client's Adam learning rate and ε (public recipe).

    Returns ``(gradient, readable)``: the read-back gradient (same shape as ``delta``) and
    a bool mask of the coordinates where lr − |Δ| exceeds :data:`DECODE_MIN_SPACINGS`
    spacings of the uploaded value plus Adam's own float32 rounding; elsewhere the size is
    only a lower bound and the gradient is set to 0.
    """
    delta = np.asarray(delta, np.float64)
    shortfall = lr - np.abs(delta)
    resolution = _decode_resolution(uploaded, lr)
    readable = np.isfinite(shortfall) & (shortfall > DECODE_MIN_SPACINGS * resolution)
    with np.errstate(divide="ignore", invalid="ignore"):
        size = eps * np.abs(delta) / shortfall
    gradient = np.where(readable, -np.sign(delta) * size, 0.0)
    return gradient, readable


def _decode_resolution(uploaded: np.ndarray, lr: float) -> np.ndarray:
    """How finely lr − |Δ| can be read: the float32 spacing of the uploaded value plus a few
    roundings of Adam's float32 arithmetic."""
    spacing = np.spacing(np.abs(np.asarray(uploaded, np.float32))).astype(np.float64)
    return spacing + 4 * 2.0**-24 * lr


def unreadable_bound(delta: np.ndarray, uploaded: np.ndarray, lr: float,
                     eps: float = ADAM_EPS) -> np.ndarray:
    """What a one-step Adam update still says about the gradient where
    :func:`decode_adam_step` cannot read its size: ``−sign(Δ)·b`` with ``b`` a lower bound on
    |g| (0 where the coordinate is readable or did not move).

    There the true shortfall lr − |Δ| is at most the readable threshold plus one resolution
    step, so |g| = ε·|Δ|/(lr − |Δ|) ≥ ε·|Δ| / ((DECODE_MIN_SPACINGS + 1)·resolution)."""
    delta = np.asarray(delta, np.float64)
    _, readable = decode_adam_step(delta, uploaded, lr, eps)
    most = (DECODE_MIN_SPACINGS + 1) * _decode_resolution(uploaded, lr)
    bound = eps * np.abs(np.nan_to_num(delta)) / most
    return np.where(readable, 0.0, -np.sign(np.nan_to_num(delta)) * bound)


def sign_hinge(sim: dict[str, torch.Tensor], bound: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ relu(|b| − s·sign(b))² / Σ (|b| + |s|)² over the coordinates where ``bound`` is
    non-zero (``s`` the simulated update): in [0, 1], 1 when every sign is wrong, and zero
    when the simulated update has every bound's sign and reaches its size (as the true one
    does), so the term never pulls away from the truth. Dividing by the simulated size as
    well keeps it on the cosine distance's scale whatever the bound's looseness."""
    mask = {k: bound[k] != 0 for k in bound}
    num = sum((torch.relu(bound[k].abs() - sim[k] * bound[k].sign()) ** 2 * mask[k]).sum()
              for k in bound)
    den = sum(((bound[k].abs() + sim[k].abs()) ** 2 * mask[k]).sum() for k in bound)
    return num / (den + 1e-30)


def update_distance(sim: dict[str, torch.Tensor], obs: dict[str, torch.Tensor],
                    distance: str,
                    weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``l2`` (DLG): Σ‖sim − obs‖² / Σ‖obs‖² (DLG's squared L2, divided by a constant so that
    L-BFGS's unit step suits updates of any size); ``cosine`` (IG): 1 − cos over all
    parameters; ``cosine_layers``: mean over parameter tensors of 1 − cos. ``weights`` (0/1
    per coordinate) leaves coordinates out of the comparison."""
    if weights is not None:
        sim = {k: sim[k] * weights[k] for k in obs}
        obs = {k: obs[k] * weights[k] for k in obs}
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


def training_mode_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that computes as the client's did in training: BatchNorm on the
    batch's own statistics (without updating running statistics), InstanceNorm unchanged."""
    copied = copy.deepcopy(model).train()
    for module in copied.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return copied


# --------------------------------------------------------------------------- attack


@dataclass
class Observation:
    """What the simulated training must reproduce.

    Attributes:
        target: per parameter, the update to match.
        weights: 0/1 per coordinate (None = every coordinate counts).
        local: the training the attacker simulates to produce a comparable update.
        objective: ``simulated`` or ``adam_decoded`` (see :class:`InversionResult`).
        readable_fraction: share of coordinates that count.
        bound: ``adam_decoded`` only: per parameter, −sign(Δ)·(lower bound on |g|) on the
            unreadable coordinates (0 elsewhere), for :func:`sign_hinge`.
    """

    target: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] | None
    local: LocalTraining
    objective: str
    readable_fraction: float = 1.0
    bound: dict[str, torch.Tensor] | None = None


@dataclass
class _Trial:
    """One optimisation of every restart: the leaf tensors and what was recorded."""

    images: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    variables: list[torch.Tensor]
    value_and_grads: Callable[..., Any]
    history: list[np.ndarray] = field(default_factory=list)
    snapshots_mri: list[np.ndarray] = field(default_factory=list)
    snapshots_ct: list[np.ndarray] = field(default_factory=list)
    snapshot_iterations: list[int] = field(default_factory=list)
    evaluations: int = 0

    def current(self, restart: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            x, y = self.images(*(v[restart].detach() for v in self.variables))
        return x.cpu().numpy().clip(0, 1), y.cpu().numpy().clip(0, 1)


@dataclass
class GradientInversion:
    """Optimisation-based inversion of one client's update (DLG and Inverting Gradients).

    Args:
        optimizer: ``lbfgs`` (DLG) or ``adam`` (Inverting Gradients).
        distance: ``l2`` | ``cosine`` | ``cosine_layers``.
        iterations: optimiser steps (L-BFGS: outer steps of ``inner_iterations`` each).
        inner_iterations: L-BFGS iterations per step, with a strong-Wolfe line search
            (DLG: 20).
        lr: step size (L-BFGS 1.0 as DLG; Adam 0.1 as IG).
        restarts: independent starts optimised together; the lowest final loss wins.
        tv_weight: total-variation prior on the dummy MRI and CT (0 = none).
        init: ``random`` (uniform noise; with ``prior=pca`` random coefficients) or ``mean``
            (the attacker's population template).
        prior: ``none`` (search every pixel) or ``pca`` (search only slices spanned by the
            first ``components`` principal components of the attacker's public cohort: a
            linear generative prior, as GAN-prior attacks use a generator).
        components: number of principal components searched with ``prior=pca`` (1…128).
        adam: ``decode`` (read a one-step Adam update's gradient back, then match gradients)
            or ``simulate`` (differentiate through the simulated Adam step, whose normalised
            step hides almost all of the gradient's size).
        sign_weight: with ``adam="decode"``, weight of :func:`sign_hinge` on the coordinates
            whose size cannot be read (0 = readable coordinates only).
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
    inner_iterations: int = 20
    lr: float = 0.1
    restarts: int = 4
    tv_weight: float = 0.01
    init: str = "random"
    prior: str = "none"
    components: int = 40
    adam: str = "decode"
    sign_weight: float = 1.0
    box: bool = True
    batched: bool = True
    snapshot_every: int = 0
    seed: int = 0
    signed: bool = False
    decay: bool = False

    def __post_init__(self) -> None:
        checks = {"optimizer": ("lbfgs", "adam"), "distance": ("l2", "cosine", "cosine_layers"),
                  "init": ("random", "mean"), "prior": ("none", "pca"),
                  "adam": ("decode", "simulate")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GradientInversion {name} = {getattr(self, name)!r}; "
                                 f"choose one of {allowed}")
        if self.iterations < 1 or self.inner_iterations < 1 or self.restarts < 1:
            raise ValueError("GradientInversion needs iterations, inner_iterations and "
                             f"restarts ≥ 1 (got {self.iterations}, {self.inner_iterations}, "
                             f"{self.restarts})")

    def reconstruct(self, payload: InversionPayload,
                    on_step: Callable[[int], None] | None = None) -> InversionResult:
        """Rebuild the payload's slices; ``on_step(i)`` is called after iteration i."""
        t0 = time.perf_counter()
        device = next(payload.model.parameters()).device
        observation = self.observe(payload, device)
        trial = self._run_trial(payload, observation, device, on_step)
        return self._select_optimal_reconstruction(trial, observation, time.perf_counter() - t0)

    # ---------------------------------------------------------------- objective

    def observe(self, payload: InversionPayload, device: torch.device) -> Observation:
        """The update the attack matches, read from the payload: the upload minus the global
        model, or for a one-step Adam upload (``adam="decode"``) the gradient read back
        from it, matched by a simulated plain gradient step."""
        names = [n for n, _ in payload.model.named_parameters()]
        start = dict(zip(payload.param_names, payload.global_params, strict=True))
        sent = dict(zip(payload.param_names, payload.client_params, strict=True))
        delta = {n: np.nan_to_num(np.asarray(sent[n], np.float64) - start[n]) for n in names}
        local = payload.local
        # An average of Adam steps cannot be decoded coordinate by coordinate: the aggregate is
        # matched by simulating every client's Adam step.
        one_adam_step = (local.optimizer == "adam" and not payload.groups
                         and local.steps(payload.num_examples) == 1)
        if not (one_adam_step and self.adam == "decode"):
            return Observation({n: _tensor(d, device) for n, d in delta.items()}, None, local,
                               "simulated")
        decoded = {n: decode_adam_step(delta[n], sent[n], local.lr) for n in names}
        readable = sum(int(r.sum()) for _, r in decoded.values())
        total = sum(r.size for _, r in decoded.values())
        # The simulated step (lr 1) is −gradient, so its bound is −(−sign(Δ)·b) = sign(Δ)·b.
        bound = ({n: _tensor(-unreadable_bound(delta[n], sent[n], local.lr), device)
                  for n in names} if self.sign_weight else None)
        # Matched against one plain step of lr 1 on every slice at once: −gradient.
        return Observation(
            target={n: _tensor(-g, device) for n, (g, _) in decoded.items()},
            weights={n: _tensor(r, device) for n, (_, r) in decoded.items()},
            local=LocalTraining(loss=local.loss, optimizer="sgd", lr=1.0, local_epochs=1,
                                batch_size=max(payload.num_examples, 1)),
            objective="adam_decoded", readable_fraction=readable / max(total, 1), bound=bound)

    def _compute_objective(self, payload: InversionPayload, observation: Observation,
                           device: torch.device
                           ) -> Callable[[Callable[..., tuple]], Callable[..., torch.Tensor]]:
        """``images → objective(*variables)``: the distance between the update simulated on
        the dummies and the observation, plus the total-variation prior."""
        model = training_mode_copy(payload.model)
        start = dict(zip(payload.param_names, payload.global_params, strict=True))
        params = {n: _tensor(start[n], device) for n, _ in model.named_parameters()}
        buffers = {n: torch.as_tensor(np.asarray(start[n])).to(device)
                   for n, _ in model.named_buffers() if n in start}

        def simulate(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            if not payload.groups:
                return simulate_update(model, params, buffers, x, y, observation.local)
            # The aggregate: every client's training on its share of the dummies, averaged
            # with the FedAvg weights the clients reported.
            ends = np.cumsum((0, *payload.groups))
            total = float(ends[-1])
            updates = [simulate_update(model, params, buffers, x[a:b], y[a:b],
                                       observation.local)
                       for a, b in zip(ends[:-1], ends[1:], strict=True)]
            return {k: sum(u[k] * (n / total) for u, n in zip(updates, payload.groups,
                                                              strict=True))
                    for k in params}

        def build(images: Callable[..., tuple]) -> Callable[..., torch.Tensor]:
            def objective(*v: torch.Tensor) -> torch.Tensor:
                x, y = images(*v)
                sim = simulate(x, y)
                loss = update_distance(sim, observation.target, self.distance,
                                       observation.weights)
                if observation.bound is not None:
                    loss = loss + self.sign_weight * sign_hinge(sim, observation.bound)
                if self.tv_weight:
                    loss = loss + self.tv_weight * (total_variation(x) + total_variation(y))
                return loss

            return objective

        return build

    # ---------------------------------------------------------------- trial

    def _run_trial(self, payload: InversionPayload, observation: Observation,
                   device: torch.device, on_step: Callable[[int], None] | None = None
                   ) -> _Trial:
        """Optimise every restart for ``iterations`` steps, recording the loss per step."""
        images, variables = self._search_space(payload, device)
        objective = self._compute_objective(payload, observation, device)(images)
        argnums = tuple(range(len(variables)))
        if self.batched:
            value_and_grads = vmap(_value_and_grad(objective, argnums))
        else:
            single = _value_and_grad(objective, argnums)

            def value_and_grads(*vs: torch.Tensor):
                outs = [single(*v) for v in zip(*vs, strict=True)]
                return (torch.stack([o[0] for o in outs]),
                        tuple(torch.stack([o[1][i] for o in outs]) for i in argnums))

        trial = _Trial(images, variables, value_and_grads)
        for v in variables:
            v.requires_grad_(True)
        opt: torch.optim.Optimizer
        if self.optimizer == "lbfgs":
            opt = dlg_lbfgs(variables, self.lr, self.inner_iterations)
        else:
            opt = torch.optim.Adam(variables, lr=self.lr)
        milestones = [int(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        schedule = (torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
                    if self.decay and self.optimizer == "adam" else None)
        last = torch.zeros(self.restarts)

        def closure() -> torch.Tensor:
            nonlocal last
            opt.zero_grad(set_to_none=True)
            values, grads = value_and_grads(*(v.detach() for v in variables))
            trial.evaluations += 1
            for v, g in zip(variables, grads, strict=True):
                v.grad = g.sign() if self.signed else g
            last = values.detach()
            return values.sum()

        for it in range(self.iterations):
            opt.step(closure)
            if schedule is not None:
                schedule.step()
            if self.box and self.prior == "none":
                with torch.no_grad():
                    for v in variables:
                        v.clamp_(0, 1)
            trial.history.append(last.cpu().numpy().copy())
            if self.snapshot_every and (it % self.snapshot_every == 0
                                        or it == self.iterations - 1):
                mri, ct = trial.current(int(torch.nan_to_num(last, nan=np.inf).argmin()))
                trial.snapshots_mri.append(mri)
                trial.snapshots_ct.append(ct)
                trial.snapshot_iterations.append(it)
            if on_step is not None:
                on_step(it + 1)
        return trial

    # ---------------------------------------------------------------- selection

    def _select_optimal_reconstruction(self, trial: _Trial, observation: Observation,
                                       seconds: float) -> InversionResult:
        """The restart with the lowest final matching loss."""
        with torch.no_grad():
            final, _ = trial.value_and_grads(*(v.detach() for v in trial.variables))
        final = torch.nan_to_num(final, nan=np.inf).cpu()
        best = int(final.argmin())
        losses = np.array(trial.history)[:, best].tolist() if trial.history else []
        mri, ct = trial.current(best)
        if trial.snapshots_mri:  # the last frame is the result, even if another restart led
            trial.snapshots_mri[-1], trial.snapshots_ct[-1] = mri, ct
        return InversionResult(
            mri=mri, ct_unit=ct,
            losses=[float(v) for v in losses],
            snapshots_mri=np.stack(trial.snapshots_mri) if trial.snapshots_mri else None,
            snapshots_ct_unit=np.stack(trial.snapshots_ct) if trial.snapshots_ct else None,
            snapshot_iterations=trial.snapshot_iterations,
            restart_losses=[float(v) for v in final],
            seconds=seconds, iterations=self.iterations, evaluations=trial.evaluations,
            objective=observation.objective,
            readable_fraction=observation.readable_fraction,
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


def dlg_lbfgs(variables: list[torch.Tensor], lr: float = 1.0,
              inner_iterations: int = 20) -> torch.optim.LBFGS:
    """DLG's optimiser: L-BFGS with ``inner_iterations`` iterations per ``step`` and a
    strong-Wolfe line search. torch gives each step ``max_eval = max_iter·5/4`` evaluations:
    with one iteration per step that leaves the line search none, so the first trial step
    that raises the loss is taken as 0 and the optimiser never moves again."""
    return torch.optim.LBFGS(variables, lr=lr, max_iter=inner_iterations, history_size=100,
                             line_search_fn="strong_wolfe")


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, np.float32)).to(device)


def _identity(mri: torch.Tensor, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return mri, ct


def _value_and_grad(objective: Callable[..., torch.Tensor], argnums: tuple[int, ...]):
    """``(*v) → (value, grads w.r.t. v)`` as a torch.func transform (vmappable)."""
    def fn(*v: torch.Tensor):
        grads, value = grad_and_value(objective, argnums=argnums)(*v)
        return value, grads

    return fn


def dlg(**overrides: Any) -> GradientInversion:
    """DLG (Zhu et al. 2019): L-BFGS (lr 1, 20 iterations per step), squared-L2 matching,
    random start, no prior."""
    return GradientInversion(**({"optimizer": "lbfgs", "distance": "l2", "iterations": 300,
                                 "inner_iterations": 20, "lr": 1.0, "restarts": 1,
                                 "tv_weight": 0.0, "box": False} | overrides))


def inverting_gradients(**overrides: Any) -> GradientInversion:
    """Inverting Gradients (Geiping et al. 2020): cosine, signed Adam lr 0.1 with step decay,
    TV prior, box constraints, restarts."""
    return GradientInversion(**({"optimizer": "adam", "distance": "cosine", "iterations": 1000,
                                 "lr": 0.1, "restarts": 4, "tv_weight": 0.01, "box": True,
                                 "signed": True, "decay": True} | overrides))


def attack_from_config(inv: InversionConfig, seed: int = 0) -> GradientInversion:
    """The attack described by ``attacks.inversion`` (method defaults filled in)."""
    factory = dlg if inv.method == "dlg" else inverting_gradients
    knobs = {"iterations": inv.iterations, "restarts": inv.restarts, "init": inv.init,
             "prior": inv.prior, "components": inv.components, "adam": inv.adam,
             "sign_weight": inv.sign_weight,
             "snapshot_every": inv.snapshot_every, "seed": seed}
    knobs |= {k: v for k, v in (("lr", inv.lr), ("tv_weight", inv.tv_weight),
                                ("distance", inv.distance)) if v is not None}
    return factory(**knobs)


# --------------------------------------------------------------------------- scenario


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


def inversion_payloads(run_dir: Path, cfg: ExperimentConfig,
                       prior: AttackerPrior) -> list[InversionPayload]:
    """One payload per targeted client, read from the run's server view; where the server
    holds no individual upload (secure aggregation), one payload of the round's aggregate
    over every client (client :data:`AGGREGATE`), whatever ``target_center`` says."""
    inv = cfg.attacks.inversion
    view = ServerView(run_dir)
    rnd = view[pick_round(view.rounds, inv.target_round)]

    def count(c: str) -> int:
        return int(rnd.metadata[c]["num_examples"]) if inv.batch_size == "auto" \
            else int(inv.batch_size)

    if not rnd.individual_uploads:
        groups = tuple(count(c) for c in rnd.clients)
        return [InversionPayload(
            model=build_model(cfg), param_names=rnd.param_names,
            global_params=rnd.global_params, client_params=rnd.aggregate,
            local=LocalTraining.from_config(cfg), num_examples=sum(groups),
            image_size=cfg.data.image_size, prior=prior, round=rnd.round, client=AGGREGATE,
            groups=groups)]
    clients = rnd.clients if inv.target_center == "all" else [rnd.clients[inv.target_center]]
    payloads = []
    for c in clients:
        payloads.append(InversionPayload(
            model=build_model(cfg), param_names=rnd.param_names,
            global_params=rnd.global_params, client_params=rnd.client_params(c),
            local=LocalTraining.from_config(cfg), num_examples=count(c),
            image_size=cfg.data.image_size, prior=prior,
            round=rnd.round, client=c,
        ))
    return payloads


def control_payload(model: torch.nn.Module, slices: SliceSet, local: LocalTraining,
                    prior: AttackerPrior, image_size: int, seed: int,
                    groups: tuple[int, ...] = ()) -> InversionPayload:
    """One calibration control: ``slices`` uploaded after the target's local training
    ``local`` by ``model`` (the target's architecture without normalisation) from a fresh
    initialisation drawn with ``seed``, through the real client code. With ``groups`` (an
    aggregate's client sizes, summing to ``len(slices)``), consecutive groups of slices are
    trained as separate clients and averaged as FedAvg averages them."""
    torch.manual_seed(seed)
    for layer in model.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    start = get_parameters(model)
    if not groups:
        trained, _ = train_local(model, start, slices, local, seed=seed)
    else:
        ends = np.cumsum((0, *groups))
        trained = FedAvg()([
            (train_local(model, start, slices.select(np.arange(a, b)), local,
                         seed=seed + k)[0], n)
            for k, (a, b, n) in enumerate(zip(ends[:-1], ends[1:], groups, strict=True))])
    return InversionPayload(model, list(model.state_dict()), start, trained, local,
                            len(slices), image_size, prior, round=1, client="control",
                            groups=tuple(groups))


def score_reconstruction(mri: np.ndarray, ct_unit: np.ndarray, truth: SliceSet,
                         prior: AttackerPrior, reference: SliceSet,
                         truth_levels: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of a reconstruction ``(R, 1, H, W)`` against the originals, the floor (the
    prior's mean) and the leak test's null (unrelated ``reference`` patients): the
    metrics of :func:`reconstruction_metrics`, ``floor_*``, and ``gain``, ``threshold``,
    ``leak``, ``null_ssim_body`` (the null's mean), ``null_upper``, ``p_value``,
    ``reference_patients``."""
    true_ct = hu_to_unit(truth.ct_hu)
    metrics = reconstruction_metrics(mri, ct_unit, truth.mri, true_ct, truth.mask)
    floor = template_metrics(prior.mri, prior.ct_unit, truth.mri, true_ct, truth.mask)
    test = leak_test(mri, ct_unit, truth.mri, true_ct, truth.mask, reference.mri,
                     hu_to_unit(reference.ct_hu), reference.mask,
                     truth_patients=truth.patient_ids, truth_levels=truth_levels,
                     attacker_patients=reference.patient_ids)
    return metrics | {"floor_ssim": floor["ssim"], "floor_ssim_body": floor["ssim_body"],
                      "floor_ssim_ct": floor["ssim_ct"], "gain": test["gain"],
                      "threshold": test["threshold"], "leak": test["leak"],
                      "null_ssim_body": test["null_mean"], "null_upper": test["null_upper"],
                      "p_value": test["p_value"],
                      "reference_patients": test["reference_patients"]}


def control_design(cfg: ExperimentConfig, slices: int, groups: tuple[int, ...] = ()) -> str:
    """The calibration control in words."""
    local = LocalTraining.from_config(cfg)
    if groups:
        steps = local.steps(max(groups))
        return (f"the hospitals' network without normalisation, the aggregate of "
                f"{len(groups)} uploads of {'/'.join(map(str, groups))} slices ({slices} in "
                f"all), {local.optimizer.upper()} {steps} local step"
                f"{'s' if steps != 1 else ''} each, {local.loss.upper()} loss")
    steps = local.steps(slices)
    return (f"the hospitals' network without normalisation, {slices} slice"
            f"{'s' if slices != 1 else ''} per upload, {local.optimizer.upper()} "
            f"{steps} local step{'s' if steps != 1 else ''}, {local.loss.upper()} loss")


def calibrate(attack: GradientInversion, cfg: ExperimentConfig, control: SliceSet,
              reference: SliceSet, prior: AttackerPrior, slices: int,
              on_step: Callable[[int], None] | None = None,
              groups: tuple[int, ...] = ()) -> dict[str, Any]:
    """The same attack, same budget, on controls at the target's difficulty: uploads of
    ``slices`` slices of the ``control`` patient after the target's own local training
    (optimiser, loss, steps, batch size) by the hospitals' network with only its
    normalisation removed (normalisation is what makes a U-Net's update hard to invert).
    With ``groups`` (the attacked aggregate's client sizes) each control is such an
    aggregate: the slices split into those clients, trained apart and averaged.
    Each of ``attacks.inversion.control_trials`` trials draws other slices and another
    initialisation; a trial is recovered by the rule that calls a target's upload leaking
    (:func:`engine.core.metrics.leak_test` against unrelated ``reference`` patients).

    Returns ``{"recovered"`` (every trial recovered), ``"total"``, ``"rate"``, ``"rate_ci"``
    (95 % Clopper–Pearson), ``"trials"`` (each trial's ``gain``, ``threshold``,
    ``recovered``, ``ssim_body``, ``null_ssim_body``), the means ``"ssim_body"``,
    ``"floor_ssim_body"``, ``"gain"``, and ``"design"``, ``"slices"``, ``"image_size"``,
    ``"iterations"``, ``"restarts"``, ``"seconds"``}``.
    """
    m = cfg.model
    model = build_unet(tuple(m.channels), "none", m.num_res_units).to(select_device())
    local = LocalTraining.from_config(cfg)
    trials, seconds = [], 0.0
    total = cfg.attacks.inversion.control_trials
    for t in range(total):
        seed = cfg.seed + t
        rng = np.random.default_rng([seed, 0xC0])
        pick = np.sort(rng.choice(len(control), slices, replace=slices > len(control)))
        truth = control.select(pick)
        payload = control_payload(model, truth, local, prior, cfg.data.image_size, seed,
                                  groups)
        step = None if on_step is None else (lambda i, t=t: on_step(t * attack.iterations + i))
        result = attack.reconstruct(payload, step)
        seconds += result.seconds
        scored = score_reconstruction(result.mri, result.ct_unit, truth, prior, reference,
                                      (pick + 0.5) / len(control))
        trials.append({"seed": seed, "recovered": scored["leak"],
                       **{k: scored[k] for k in ("gain", "threshold", "ssim_body",
                                                 "null_ssim_body", "floor_ssim_body")}})
    recovered = sum(t["recovered"] for t in trials)
    ci = binomtest(recovered, total).proportion_ci(confidence_level=0.95, method="exact")
    return {"recovered": recovered == total, "total": total, "rate": recovered / total,
            "rate_ci": [float(ci.low), float(ci.high)], "trials": trials,
            **{k: float(np.mean([t[k] for t in trials]))
               for k in ("ssim_body", "floor_ssim_body", "gain")},
            "design": control_design(cfg, slices, groups), "slices": slices,
            "image_size": cfg.data.image_size, "iterations": attack.iterations,
            "restarts": attack.restarts, "seconds": round(seconds, 2)}


def inversion_verdict(per_client: dict[str, dict[str, Any]],
                      calibration: dict[str, Any] | None) -> str:
    """``leak`` when some client's reconstruction passes the leak test; ``no_leak`` only when
    none does *and* the calibration controls at the target's difficulty were all recovered at
    the same budget; otherwise ``inconclusive`` (the attack is too weak here to tell)."""
    if any(p["leak"] for p in per_client.values()):
        return "leak"
    return "no_leak" if calibration and calibration.get("recovered") else "inconclusive"


def run_inversion(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort, attacker: AttackerData,
                  log: Callable[[str], None] = lambda _msg: None,
                  progress: Callable[[int, int, str], None] = lambda *_: None
                  ) -> dict[str, Any]:
    """Attack the targeted clients of a finished run; calibrate; store images; return the
    ``inversion`` block of ``summary.json``. ``progress(done, total, detail)`` counts
    iterations over every attacked hospital and the calibration control.

    The originals (each client's training slices) are used only to score the result.
    """
    inv = cfg.attacks.inversion
    out = Path(run_dir) / "inversion"
    out.mkdir(exist_ok=True)
    attack = attack_from_config(inv, cfg.seed)
    prior = AttackerPrior.from_data(attacker.public)
    names = [c.name for c in cohort.centers]
    per_client: dict[str, Any] = {}
    payloads = inversion_payloads(run_dir, cfg, prior)
    total = (len(payloads) + inv.control_trials) * attack.iterations  # hospitals, controls

    def steps(k: int, what: str) -> Callable[[int], None]:
        return lambda i: progress(k * attack.iterations + i, total,
                                  f"{what}, iteration {i:,} of {attack.iterations:,}")

    for k, payload in enumerate(payloads):
        if payload.groups:
            log(f"every upload of round {payload.round} is masked: inverting the round's "
                f"aggregate of {len(payload.groups)} hospitals ({payload.num_examples} slices "
                f"at once, {attack.iterations} iterations)")
            truth = SliceSet.concat([c.train for c in cohort.centers
                                     if c.name in _aggregated(run_dir, payload.round)])
            reference = pooled_reference_patients(cfg.data, cfg.seed, cohort, attacker)
        else:
            log(f"inverting {payload.client}'s upload of round {payload.round} (hospital "
                f"{k + 1} of {len(payloads)}, {payload.num_examples} slices, "
                f"{attack.iterations} iterations)")
            index = names.index(payload.client)
            truth = cohort.centers[index].train
            reference = reference_patients(cfg.data, cfg.seed, cohort, index, attacker)
        result = attack.reconstruct(payload, steps(k, f"hospital {k + 1} of {len(payloads)}"
                                                   if not payload.groups else "aggregate"))
        scored = score_reconstruction(result.mri, result.ct_unit, truth, prior, reference)
        per_client[payload.client] = {
            **{k: v for k, v in scored.items() if k != "pairs"},
            "round": payload.round, "seconds": round(result.seconds, 2),
            "final_loss": result.losses[-1], "restart_losses": result.restart_losses,
            "evaluations": result.evaluations, "objective": result.objective,
            "readable_fraction": result.readable_fraction,
        }
        _save_client(out, payload, result, truth, scored["pairs"], cfg.data.image_size)
    slices = max(p.num_examples for p in payloads)
    groups = payloads[0].groups
    design = control_design(cfg, slices, groups)
    log(f"calibrating: the same attack ({attack.iterations} iterations) on "
        f"{inv.control_trials} control upload(s) at the target's difficulty ({design})")
    calibration = calibrate(attack, cfg, attacker.control,
                            reference_patients(cfg.data, cfg.seed, cohort, None, attacker),
                            prior, slices, lambda i: progress(
                                len(payloads) * attack.iterations + i, total,
                                f"calibration control, iteration {i:,} of "
                                f"{inv.control_trials * attack.iterations:,}"), groups)
    keys = ("ssim", "ssim_body", "psnr_db", "ssim_ct", "psnr_db_ct", "ssim_coarse",
            "floor_ssim", "floor_ssim_body", "null_ssim_body")
    return {
        "method": inv.method,
        **{k: float(np.mean([p[k] for p in per_client.values()])) for k in keys},
        "per_client": per_client,
        "iterations": attack.iterations,
        "restarts": attack.restarts,
        "inner_iterations": attack.inner_iterations if attack.optimizer == "lbfgs" else None,
        "evaluations": max(p["evaluations"] for p in per_client.values()),
        "verdict": inversion_verdict(per_client, calibration),
        # "aggregate": every upload was masked, the server attacked the round's sum.
        "observed": AGGREGATE if groups else "uploads",
        "calibration": calibration,
        "leak_margin": LEAK_MARGIN,
        "null": {"draws": NULL_DRAWS, "quantile": NULL_QUANTILE, "margin": LEAK_MARGIN,
                 "reference_patients": min(p["reference_patients"]
                                           for p in per_client.values()),
                 "gain": max(p["null_upper"] - p["null_ssim_body"]
                             for p in per_client.values())},
    }


def _aggregated(run_dir: Path, rnd: int) -> list[str]:
    """The clients whose uploads the round's aggregate sums."""
    return ServerView(run_dir)[rnd].clients


def _save_client(out: Path, payload: InversionPayload, result: InversionResult,
                 truth: SliceSet, pairs: list[list[int]], image_size: int) -> None:
    """``<client>.npz`` (reconstruction, originals, pairs, floor, loss curve, snapshots) and
    a PNG of the first matched pair (MRI and CT, original | reconstruction)."""
    true_ct = hu_to_unit(truth.ct_hu)
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
    save_png(row, out / f"{payload.client}.png", scale=max(1, 128 // image_size))
