"""What the inversion attacker optimises: the client's local training simulated on dummy
data, the distance between the simulated and the observed update, the Adam read-back,
and the image prior (total variation). Pure functions of tensors; the attack that uses
them is :mod:`engine.attacks.inversion`."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch.func import functional_call, grad

from engine.learning.local import ADAM_EPS, LocalTraining

SMOOTH_L1_EPS = 1e-4
# Adam decoding trusts a coordinate when lr − |Δ| spans at least this many float32 spacings
# of the uploaded parameter (the read-back size is then within ~25 %).
DECODE_MIN_SPACINGS = 4.0


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
