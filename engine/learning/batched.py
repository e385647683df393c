"""Local training of several hospitals as one batched computation.

:func:`train_local_batched` does what :func:`engine.learning.local.train_local` does for each
of ``K`` hospitals — same start (the global model), same batches in the same order (each
hospital's own seed), same loss, FedProx term and optimiser, same number of steps — but
every step of all hospitals is one forward and one backward pass of a *grouped* network:

* the hospitals' batches are stacked along the channel axis, ``(B, K·C, H, W)``, so that
  hospital ``k`` owns channels ``k·C … (k+1)·C − 1`` of every feature map;
* every convolution runs as one grouped convolution (``groups = K``) whose weight is the
  hospitals' weights stacked, ``(K·O, I, kh, kw)``; InstanceNorm, BatchNorm (batch
  statistics and running statistics are per channel, hence per hospital) and PReLU act per
  channel; a skip connection concatenates per hospital;
* the parameters of all hospitals are one ``(K, P)`` tensor and the optimiser (SGD or Adam,
  the formulas of ``torch.optim``'s single-tensor implementation) updates it in one go.

The network is run by a small interpreter of the MONAI U-Net's building blocks
(:func:`grouped_forward`), not by ``torch.func.vmap``: ``vmap``'s convolution rule is the same
grouped convolution, but the interpreter handles BatchNorm's running statistics explicitly
and computes PReLU with cheaper kernels, and on 2 CPU cores one Adam step of 4 hospitals
took 14.8 ms against vmap's 20.4 ms (``benchmarks/batched_hospitals.py``).
A network with any other module is refused (:func:`unsupported_reason`).

Hospitals of different sizes: a hospital whose batch is smaller than the others' at a step
is padded with empty slices that carry no loss (their gradient is exactly zero; InstanceNorm
and no norm keep samples independent; BatchNorm would mix them into the batch statistics and
is refused). A hospital that has done all its steps leaves the batch, so it takes exactly
its own number of optimiser steps.

Results equal the sequential path's up to float32 rounding: the same sums are taken in
another order (grouped convolutions, per-hospital loss means), see ``tests/test_batched.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

from engine.core.types import NDArrays
from engine.data.types import SliceSet
from engine.learning.local import ADAM_EPS, LocalTraining, as_tensors
from engine.learning.model import set_parameters

# torch.optim.Adam's defaults, which train_local uses.
ADAM_BETAS = (0.9, 0.999)


class UnsupportedModel(ValueError):
    """The network holds a module the grouped interpreter does not know."""


@dataclass(frozen=True)
class _Slot:
    """One trainable tensor inside the ``(K, P)`` parameter matrix."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


# --------------------------------------------------------------------------- support


def _check_module(module: nn.Module, name: str) -> None:
    """Raise :class:`UnsupportedModel` unless :func:`_run` handles ``module`` exactly as the
    module's own ``forward`` in training mode."""
    where = name or "the model"
    if isinstance(module, UNet | ResidualUnit):
        pass
    elif isinstance(module, SkipConnection):
        if module.mode != "cat" or module.dim != 1:
            raise UnsupportedModel(f"{where}: skip connection mode {module.mode!r} on dim "
                                   f"{module.dim} (only channel concatenation is batched)")
    elif isinstance(module, nn.Sequential | nn.Identity):
        pass
    elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise UnsupportedModel(f"{where}: padding {module.padding!r} / "
                                   f"{module.padding_mode!r} (only zero padding is batched)")
    elif isinstance(module, nn.InstanceNorm2d):
        if module.track_running_stats:
            raise UnsupportedModel(f"{where}: InstanceNorm with running statistics")
    elif isinstance(module, nn.BatchNorm2d):
        if module.track_running_stats and module.momentum is None:
            raise UnsupportedModel(f"{where}: BatchNorm with a cumulative moving average")
    elif isinstance(module, nn.PReLU):
        pass
    elif isinstance(module, nn.Dropout):
        if module.p > 0:
            raise UnsupportedModel(f"{where}: dropout p = {module.p} (random masks would "
                                   "differ from the sequential path)")
    else:
        raise UnsupportedModel(f"{where}: {type(module).__name__} is not batched")
    for child_name, child in module.named_children():
        if isinstance(module, ResidualUnit) and child_name not in ("conv", "residual"):
            raise UnsupportedModel(f"{where}: unexpected ResidualUnit part {child_name!r}")
        if isinstance(module, UNet) and child_name != "model":
            raise UnsupportedModel(f"{where}: unexpected UNet part {child_name!r}")
        _check_module(child, f"{name}.{child_name}" if name else child_name)


def unsupported_reason(model: nn.Module, cfg: LocalTraining, sizes: list[int]) -> str | None:
    """Why hospitals with ``sizes`` training slices cannot be trained together on ``model``
    with ``cfg`` (``None``: they can).

    Refused: fewer than two hospitals, a hospital without slices, a module other than the
    MONAI U-Net's building blocks, an optimiser other than SGD/Adam, a loss other than
    L1/MSE, a precision other than fp32, and BatchNorm when the hospitals' batches differ in
    size at some step (padding would change the batch statistics).
    """
    if len(sizes) < 2:
        return "fewer than two hospitals to train together"
    if min(sizes) < 1:
        return "a hospital has no training slices"
    if cfg.optimizer not in ("sgd", "adam"):
        return f"optimizer {cfg.optimizer!r} is not batched"
    if cfg.loss not in ("l1", "mse"):
        return f"loss {cfg.loss!r} is not batched"
    if cfg.precision != "fp32":
        return f"precision {cfg.precision!r} is not batched (fp32 only)"
    try:
        _check_module(model, "")
    except UnsupportedModel as err:
        return str(err)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if has_bn and _needs_padding([cfg.batch_sizes(n) for n in sizes]):
        return ("BatchNorm with hospitals whose batches differ in size: padding would change "
                "the batch statistics")
    return None


def _needs_padding(schedules: list[list[int]]) -> bool:
    """Whether, at some step, the hospitals still training have batches of different sizes."""
    steps = max(len(s) for s in schedules)
    return any(len({s[t] for s in schedules if t < len(s)}) > 1 for t in range(steps))


# --------------------------------------------------------------------------- forward


def _cat_per_group(x: torch.Tensor, y: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, G·C1, H, W)`` and ``(B, G·C2, H, W)`` → ``(B, G·(C1+C2), H, W)``, each group's
    channels ``[x_g, y_g]`` (what ``torch.cat(dim=1)`` does for one hospital)."""
    b, _, h, w = x.shape
    out = torch.cat([x.reshape(b, groups, -1, h, w), y.reshape(b, groups, -1, h, w)], dim=2)
    return out.reshape(b, -1, h, w)


def _run(module: nn.Module, name: str, x: torch.Tensor, params: dict[str, torch.Tensor],
         buffers: dict[str, torch.Tensor], groups: int) -> torch.Tensor:
    pre = f"{name}." if name else ""
    if isinstance(module, UNet):
        return _run(module.model, pre + "model", x, params, buffers, groups)
    if isinstance(module, ResidualUnit):  # MONAI: res = residual(x); return conv(x) + res
        res = _run(module.residual, pre + "residual", x, params, buffers, groups)
        return _run(module.conv, pre + "conv", x, params, buffers, groups) + res
    if isinstance(module, SkipConnection):
        y = _run(module.submodule, pre + "submodule", x, params, buffers, groups)
        return _cat_per_group(x, y, groups)
    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            x = _run(child, pre + child_name, x, params, buffers, groups)
        return x
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        w = params[pre + "weight"]
        weight = w.reshape(-1, *w.shape[2:])
        bias = params[pre + "bias"].reshape(-1) if module.bias is not None else None
        if isinstance(module, nn.Conv2d):
            return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation,
                            groups * module.groups)
        return F.conv_transpose2d(x, weight, bias, module.stride, module.padding,
                                  module.output_padding, groups * module.groups,
                                  module.dilation)
    if isinstance(module, nn.InstanceNorm2d):
        weight = params[pre + "weight"].reshape(-1) if module.affine else None
        bias = params[pre + "bias"].reshape(-1) if module.affine else None
        return F.instance_norm(x, None, None, weight, bias, True, module.momentum or 0.0,
                               module.eps)
    if isinstance(module, nn.BatchNorm2d):
        weight = params[pre + "weight"].reshape(-1) if module.affine else None
        bias = params[pre + "bias"].reshape(-1) if module.affine else None
        if not module.track_running_stats:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, module.eps)
        buffers[pre + "num_batches_tracked"].add_(1)
        # Views of the (G, C) buffers: batch_norm updates them in place, per hospital.
        return F.batch_norm(x, buffers[pre + "running_mean"].view(-1),
                            buffers[pre + "running_var"].view(-1), weight, bias, True,
                            module.momentum, module.eps)
    if isinstance(module, nn.PReLU):
        # relu(x) + a·(x − relu(x)) is PReLU exactly (x − relu(x) is x or 0); cheaper than
        # PReLU's backward kernel, whose weight gradient reduces one channel at a time.
        a = params[pre + "weight"]
        channels = x.shape[1] // groups
        a = a.expand(groups, channels) if a.shape[1] == 1 else a
        r = F.relu(x)
        return r + a.reshape(1, -1, 1, 1) * (x - r)
    if isinstance(module, nn.Dropout | nn.Identity):
        return x
    raise UnsupportedModel(f"{name or 'the model'}: {type(module).__name__} is not batched")


def grouped_forward(model: nn.Module, params: dict[str, torch.Tensor],
                    buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model``'s training-mode forward pass for ``G`` hospitals at once.

    Args:
        params: name → ``(G, *shape)``, every parameter of ``model`` for each hospital.
        buffers: name → ``(G, *shape)``, BatchNorm's running statistics and counters
            (updated in place, as the modules would update theirs).
        x: ``(B, G·C_in, H, W)``: hospital ``g``'s batch in channels ``g·C_in … ``.

    Returns:
        ``(B, G·C_out, H, W)``, hospital ``g``'s output in channels ``g·C_out …``.
    """
    groups = next(iter(params.values())).shape[0]
    return _run(model, "", x, params, buffers, groups)


# --------------------------------------------------------------------------- optimiser


class _Optimizer:
    """SGD or Adam on the ``(K, P)`` parameter matrix: ``torch.optim``'s single-tensor
    formulas (no momentum or weight decay, Adam betas (0.9, 0.999), ε = ADAM_EPS), so each
    row steps exactly as that hospital's own optimiser would."""

    def __init__(self, cfg: LocalTraining, flat: torch.Tensor) -> None:
        self.kind, self.lr, self.step_count = cfg.optimizer, cfg.lr, 0
        self.exp_avg = torch.zeros_like(flat) if self.kind == "adam" else None
        self.exp_avg_sq = torch.zeros_like(flat) if self.kind == "adam" else None

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        if self.kind != "adam":
            flat.add_(grad, alpha=-self.lr)
            return
        assert self.exp_avg is not None and self.exp_avg_sq is not None
        beta1, beta2 = ADAM_BETAS
        self.step_count += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1**self.step_count)
        bias_correction2_sqrt = (1 - beta2**self.step_count) ** 0.5
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        flat.addcdiv_(self.exp_avg, denom, value=-step_size)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the hospitals ``rows`` (the others have finished)."""
        if self.exp_avg is not None and self.exp_avg_sq is not None:
            self.exp_avg, self.exp_avg_sq = self.exp_avg[rows], self.exp_avg_sq[rows]


# --------------------------------------------------------------------------- training


def train_local_batched(model: nn.Module, global_params: NDArrays, datasets: list[SliceSet],
                        cfg: LocalTraining, *, seeds: list[int],
                        device: torch.device | None = None) -> list[tuple[NDArrays, dict]]:
    """:func:`~engine.learning.local.train_local` for every hospital in ``datasets`` at once.

    Args:
        model: the network (its weights are overwritten; it is used as a template).
        global_params: the round's global model, every hospital's start.
        datasets: hospital ``k``'s training slices, ``mri``/``ct_hu`` ``(N_k, 1, H, W)``.
        seeds: hospital ``k``'s batch-order seed (as given to ``train_local``).

    Returns:
        For each hospital, what ``train_local`` returns: its parameters in ``state_dict``
        order and ``{"train_loss", "num_examples", "steps"}``.

    Raises:
        UnsupportedModel: see :func:`unsupported_reason`.
    """
    sizes = [len(d) for d in datasets]
    reason = unsupported_reason(model, cfg, sizes)
    if reason is not None:
        raise UnsupportedModel(reason)
    device = device or next(model.parameters()).device
    set_parameters(model, global_params)
    model.to(device).train()
    state = model.state_dict()
    param_names = [n for n, _ in model.named_parameters()]
    slots, start = [], 0
    for n in param_names:
        shape = tuple(state[n].shape)
        size = int(np.prod(shape, dtype=np.int64))
        slots.append(_Slot(n, shape, start, start + size))
        start += size
    buffer_names = [n for n in state if n not in set(param_names)]
    k_all = len(datasets)
    flat = torch.cat([state[s.name].reshape(-1) for s in slots]).to(device)
    flat = flat.repeat(k_all, 1).contiguous().requires_grad_(True)  # (K, P)
    anchor = flat.detach().clone() if cfg.fedprox_mu > 0 else None
    buffers = {n: state[n].unsqueeze(0).repeat(k_all, *([1] * state[n].dim())).to(device)
               for n in buffer_names}
    opt = _Optimizer(cfg, flat.detach())
    tensors = [as_tensors(d, device) for d in datasets]
    batches = [cfg.batch_order(n, seed) for n, seed in zip(sizes, seeds, strict=True)]
    loss_elem = {"l1": lambda a, b: (a - b).abs(), "mse": lambda a, b: (a - b) ** 2}[cfg.loss]
    c_in = tensors[0][0].shape[1]
    height, width = tensors[0][0].shape[2:]
    active = list(range(k_all))  # hospitals still training, in row order of `flat`
    losses: list[list[torch.Tensor]] = [[] for _ in range(k_all)]
    results: dict[int, NDArrays] = {}

    def finish(rows: list[int]) -> None:
        for row in rows:
            k = active[row]
            params = flat[row].detach()
            out = []
            for name in state:
                if name in buffers:
                    out.append(buffers[name][row].cpu().numpy().copy())
                else:
                    s = slots[param_names.index(name)]
                    out.append(params[s.start : s.stop].reshape(s.shape).cpu().numpy().copy())
            results[k] = out

    for t in range(max(len(b) for b in batches)):
        done = [row for row, k in enumerate(active) if t >= len(batches[k])]
        if done:
            finish(done)
            keep = [row for row in range(len(active)) if row not in done]
            rows = torch.as_tensor(keep, device=device)
            flat = flat.detach()[rows].contiguous().requires_grad_(True)
            anchor = anchor[rows] if anchor is not None else None
            buffers = {n: b[rows].contiguous() for n, b in buffers.items()}
            opt.keep(rows)
            active = [active[row] for row in keep]
        g = len(active)
        counts = [len(batches[k][t]) for k in active]
        b_max = max(counts)
        x = torch.zeros(b_max, g, c_in, height, width, device=device)
        y = torch.zeros(b_max, g, *tensors[active[0]][1].shape[1:], device=device)
        for row, k in enumerate(active):
            idx = batches[k][t].to(device)
            x[: counts[row], row] = tensors[k][0][idx]
            y[: counts[row], row] = tensors[k][1][idx]
        params = {s.name: flat[:, s.start : s.stop].view(g, *s.shape) for s in slots}
        out = grouped_forward(model, params, buffers, x.view(b_max, -1, height, width))
        per_slice = loss_elem(out.view(b_max, g, -1), y.view(b_max, g, -1)).mean(dim=2)
        n_slices = torch.as_tensor(counts, dtype=per_slice.dtype, device=device)
        if min(counts) < b_max:  # padded slices carry no loss (and get no gradient)
            valid = torch.arange(b_max, device=device)[:, None] < n_slices[None, :]
            per_slice = torch.where(valid, per_slice, torch.zeros_like(per_slice))
        loss = per_slice.sum(dim=0) / n_slices  # (G,): each hospital's mean loss
        if anchor is not None:
            loss = loss + cfg.fedprox_mu / 2 * ((flat - anchor) ** 2).sum(dim=1)
        (grad,) = torch.autograd.grad(loss.sum(), flat)
        opt.step(flat.detach(), grad)
        detached = loss.detach()
        for row, k in enumerate(active):
            losses[k].append(detached[row])
    finish(list(range(len(active))))
    return [(results[k], {"train_loss": float(torch.stack(losses[k]).mean()),
                          "num_examples": sizes[k], "steps": len(batches[k])})
            for k in range(k_all)]


def batched_slower_reason(device: torch.device) -> str | None:
    """Why ``federation.batched_clients = auto`` should not batch on ``device`` (``None``:
    batch).

    Measured on 2 CPU cores (``benchmarks/batched_hospitals.py``, ``benchmarks/README.md``):
    a round of 4 hospitals took 2.14× less wall time batched at 32² (``poison-base``) and
    1.52× at 48² (``study-setup``), 16 hospitals 3.75×; no CPU configuration measured was
    slower, so auto batches on CPU. Other devices were not measured: auto keeps them
    sequential (``on`` batches there too).
    """
    if device.type != "cpu":
        return (f"batched training was not measured on {device.type} (set "
                "federation.batched_clients = 'on' to use it)")
    return None
