"""Local training and evaluation of one center: runtime-agnostic (in-process or Flower).

Inputs and outputs are plain NumPy parameter lists in ``state_dict`` order, so any runtime
can call these functions unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.config import ExperimentConfig
from engine.core.metrics import patient_metrics
from engine.core.types import NDArrays
from engine.core.units import HU_MIN, hu_to_unit, unit_to_hu
from engine.data.types import SliceSet
from engine.learning.model import get_parameters, set_parameters

# Adam's ε, public like the rest of the recipe: an attacker that knows it can read the size of
# a one-step Adam update's gradient back from the update (engine.attacks.inversion).
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class LocalTraining:
    """Knobs of one client's local training (see ``federation.*`` in the config)."""

    loss: str = "l1"
    optimizer: str = "adam"
    lr: float = 2e-3
    local_epochs: int = 1
    batch_size: int = 8
    fedprox_mu: float = 0.0
    precision: str = "fp32"

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> LocalTraining:
        f = cfg.federation
        return cls(loss=f.loss, optimizer=f.optimizer, lr=f.lr, local_epochs=f.local_epochs,
                   batch_size=f.batch_size, fedprox_mu=f.fedprox_mu, precision=f.precision)

    def steps(self, num_examples: int) -> int:
        """Optimiser steps of one round on ``num_examples`` slices."""
        return self.local_epochs * -(-num_examples // self.batch_size)

    def batch_sizes(self, num_examples: int) -> list[int]:
        """The size of every batch of one round on ``num_examples`` slices, in order (the
        last batch of each epoch is the remainder)."""
        b, n = self.batch_size, num_examples
        return [min(b, n - start) for _ in range(self.local_epochs)
                for start in range(0, n, b)]

    def batch_order(self, num_examples: int, seed: int) -> list[torch.Tensor]:
        """The slice indices of every batch of one round, in order: each epoch a fresh
        permutation drawn from a CPU generator seeded with ``seed``, cut into batches.

        The sequential and the batched trainers (:mod:`engine.learning.batched`) both use it,
        so a hospital sees the same batches in the same order on either path.
        """
        gen = torch.Generator().manual_seed(seed)
        batches = []
        for _ in range(self.local_epochs):
            order = torch.randperm(num_examples, generator=gen)
            batches += [order[start : start + self.batch_size]
                        for start in range(0, num_examples, self.batch_size)]
        return batches


def training_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``l1`` (FedSynthCT-Brain) or ``mse`` on normalised CT units."""
    return {"l1": F.l1_loss, "mse": F.mse_loss}[name]


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to a GPU through pinned memory, so the copy is a DMA that
    does not stall the host."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def as_tensors(data: SliceSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mri (N,1,H,W) in [0,1], ct (N,1,H,W) in normalised CT units)`` on ``device``."""
    return _to_device(data.mri, device), _to_device(hu_to_unit(data.ct_hu), device)


def train_local(model: torch.nn.Module, global_params: NDArrays, data: SliceSet,
                cfg: LocalTraining, *, seed: int,
                device: torch.device | None = None) -> tuple[NDArrays, dict[str, float]]:
    """Train ``model`` from ``global_params`` on ``data`` for ``cfg.local_epochs`` epochs.

    Optimiser state starts fresh each round, as clients keep no state between rounds.
    FedProx adds μ/2·‖w − w_global‖² to the loss. With ``cfg.precision = "bf16"`` the forward
    pass and the loss run under bf16 autocast; parameters, gradients and the optimiser stay
    fp32. Returns the new parameters and ``{"train_loss", "num_examples", "steps"}`` (loss in
    normalised CT units).
    """
    device = device or next(model.parameters()).device
    set_parameters(model, global_params)
    model.to(device).train()
    mri, ct = as_tensors(data, device)
    loss_fn = training_loss(cfg.loss)
    params = list(model.parameters())
    anchor = [p.detach().clone() for p in params] if cfg.fedprox_mu > 0 else None
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, eps=ADAM_EPS)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr)
    n = len(data)
    losses, steps = [], 0
    for batch in cfg.batch_order(n, seed):
        idx = batch.to(device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = loss_fn(model(mri[idx]), ct[idx])
        if anchor is not None:
            prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
            loss = loss + cfg.fedprox_mu / 2 * prox
        loss.backward()
        opt.step()
        losses.append(loss.detach())  # converted once at the end: no per-step sync
        steps += 1
    return get_parameters(model), {
        "train_loss": float(torch.stack(losses).mean()), "num_examples": n, "steps": steps,
    }


@torch.no_grad()
def predict_sct_hu(model: torch.nn.Module, data: SliceSet, batch_size: int = 32) -> np.ndarray:
    """Synthetic CT ``(N, 1, H, W)`` in HU; −1024 HU outside the body mask (as the study)."""
    device = next(model.parameters()).device
    model.eval()
    outs = []
    for start in range(0, len(data), batch_size):
        mri = torch.from_numpy(np.ascontiguousarray(data.mri[start : start + batch_size]))
        outs.append(unit_to_hu(model(mri.to(device))).cpu().numpy())
    sct = np.concatenate(outs) if outs else np.empty_like(data.ct_hu)
    return np.where(data.mask, sct, HU_MIN).astype(np.float32)


def evaluate_patients(model: torch.nn.Module, params: NDArrays,
                      data: SliceSet) -> dict[str, dict[str, float]]:
    """Patient id → SynthRAD2023 metrics of ``params`` on ``data`` (MAE HU, PSNR dB, SSIM)."""
    set_parameters(model, params)
    return patient_metrics(data.ct_hu, predict_sct_hu(model, data), data.mask, data.patient_ids)
