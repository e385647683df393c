"""MONAI U-Net factory and parameter exchange helpers.

The network maps an MRI slice ``(B, 1, H, W)`` in [0, 1] to a CT slice ``(B, 1, H, W)`` in
normalised CT units (see :mod:`engine.data.preprocess`). InstanceNorm is the default: SecAgg+
clips raw parameters and BatchNorm's running statistics break both secure aggregation and
update inversion.
"""

from __future__ import annotations

import functools
from typing import get_args

import numpy as np
import torch
from monai.networks.nets import UNet

from engine.core.config import ExperimentConfig, Norm
from engine.core.types import NDArrays

NORMS = get_args(Norm)


@functools.lru_cache(maxsize=1)
def select_device() -> torch.device:
    """The compute device, chosen once: CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_unet(channels: tuple[int, ...] = (16, 32, 64, 128), norm: str = "instance",
               num_res_units: int = 2) -> UNet:
    """2-D MONAI U-Net with one input and one output channel.

    Args:
        channels: feature maps per level; each level halves the resolution, so the image
            size must be divisible by ``2 ** (len(channels) - 1)``.
        norm: ``instance`` | ``batch`` | ``none``.
        num_res_units: residual units per block (0 = plain convolutions).
    """
    if norm not in NORMS:
        raise ValueError(f"model.norm = {norm!r} is not allowed; choose one of {NORMS}")
    if len(channels) < 2:
        raise ValueError(f"model.channels = {list(channels)} needs at least two levels")
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        norm=None if norm == "none" else norm,
    )


def build_model(cfg: ExperimentConfig) -> torch.nn.Module:
    """The U-Net of ``cfg.model``, initialised from ``cfg.seed``, on the selected device."""
    torch.manual_seed(cfg.seed)
    m = cfg.model
    return build_unet(tuple(m.channels), m.norm, m.num_res_units).to(select_device())


def get_parameters(model: torch.nn.Module) -> NDArrays:
    """The model's state (parameters and buffers) as NumPy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_parameters(model: torch.nn.Module, arrays: NDArrays) -> None:
    """Load arrays from :func:`get_parameters` back into ``model`` (dtypes are restored)."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(f"expected {len(state)} arrays, got {len(arrays)}")
    new_state = {
        k: torch.as_tensor(np.asarray(a), dtype=v.dtype).reshape(v.shape)
        for (k, v), a in zip(state.items(), arrays, strict=True)
    }
    model.load_state_dict(new_state)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
