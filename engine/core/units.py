"""CT units: Hounsfield units (HU) and the normalised units the network predicts.

``unit = (clip(hu, −1024, 3000) + 1024) / 4024``, so [−1024, 3000] HU maps to [0, 1]; 4024 HU is
the SynthRAD2023 data range used by PSNR and SSIM.
"""

from __future__ import annotations

import numpy as np
import torch

HU_MIN = -1024.0
HU_MAX = 3000.0
HU_RANGE = HU_MAX - HU_MIN  # 4024, the SynthRAD2023 data range


def hu_to_unit(ct_hu: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """HU → normalised CT units in [0, 1] (clipped to [−1024, 3000] HU first)."""
    if isinstance(ct_hu, torch.Tensor):
        return (ct_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE
    return (np.clip(ct_hu, HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE


def unit_to_hu(ct_unit: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Normalised CT units → HU, clipped to [−1024, 3000]."""
    if isinstance(ct_unit, torch.Tensor):
        return ct_unit.clamp(0.0, 1.0) * HU_RANGE + HU_MIN
    return np.clip(ct_unit, 0.0, 1.0) * HU_RANGE + HU_MIN
