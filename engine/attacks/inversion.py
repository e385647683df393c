"""Gradient inversion by a curious server: DLG and Inverting Gradients on the server view.

Scenario and attack are separate (as in ``breaching``): :func:`inversion_payloads` takes what
the server holds of one recorded round — each client's upload, or under secure aggregation,
where every upload is masked, only the round's aggregate (a multi-image inversion of every
client's slices at once) — plus what the protocol makes public (architecture, the global
model, the clients' local training recipe, their reported numbers of examples) and what the
attacker holds itself (:class:`AttackerPrior`). Every attack has the same shape,
``attack.reconstruct(payload) → InversionResult``, split into the objective, the trial (the
optimisation of all restarts) and the selection of the best restart; the objective's pieces
are in :mod:`engine.attacks.inversion_objective`, the scenario in
:mod:`engine.attacks.inversion_scenario`.

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
:func:`reconstruction_metrics.leak_test`: it beats, by a margin and the null's upper quantile,
what the same reconstruction scores against unrelated patients' slices under the same
matching. A reconstruction that does not shows a leak-free *target* only if the same attack,
at the same budget, rebuilds uploads of the target's own difficulty with only the network's
normalisation removed (:func:`calibrate`); otherwise the verdict is ``inconclusive``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.func import grad_and_value, vmap

from engine.attacks.inversion_objective import (
    decode_adam_step,
    sign_hinge,
    simulate_update,
    total_variation,
    training_mode_copy,
    unreadable_bound,
    update_distance,
)
from engine.core.config import (
    AdamMode,
    InversionConfig,
    InversionDistance,
    InversionInit,
    InversionPrior,
)
from engine.core.types import NDArrays
from engine.core.units import hu_to_unit
from engine.data.types import SliceSet
from engine.learning.local import LocalTraining

# The per-client key (and file stem) of the round's aggregate, attacked under secure
# aggregation where the server holds no individual upload.
AGGREGATE = "aggregate"
# A client leaks when reconstruction_metrics.leak_test says so (its reconstruction beats the
# permutation null by LEAK_MARGIN and the null's upper quantile); the calibration control
# must leak by the same rule.
VERDICTS = ("leak", "no_leak", "inconclusive")


# The attack's own optimiser (the config picks it through attacks.inversion.method).
InversionOptimizer = Literal["lbfgs", "adam"]


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

    optimizer: InversionOptimizer = "adam"
    distance: InversionDistance = "cosine"
    iterations: int = 1000
    inner_iterations: int = 20
    lr: float = 0.1
    restarts: int = 4
    tv_weight: float = 0.01
    init: InversionInit = "random"
    prior: InversionPrior = "none"
    components: int = 40
    adam: AdamMode = "decode"
    sign_weight: float = 1.0
    box: bool = True
    batched: bool = True
    snapshot_every: int = 0
    seed: int = 0
    signed: bool = False
    decay: bool = False

    def __post_init__(self) -> None:
        checks = {"optimizer": InversionOptimizer, "distance": InversionDistance,
                  "init": InversionInit, "prior": InversionPrior, "adam": AdamMode}
        for name, kind in checks.items():
            allowed = get_args(kind)
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
