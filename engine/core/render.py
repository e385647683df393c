"""Image rendering for reports and the dashboard (PNG via Pillow; no plotting backend).

Display windows: MRI [0, 1]; CT and sCT a brain/bone window [−200, 1000] HU; error map
|CT − sCT| on [0, 500] HU with a perceptual colour ramp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CT_WINDOW_HU = (-200.0, 1000.0)
ERROR_MAX_HU = 500.0
# A short inferno-like ramp (black → purple → orange → yellow), interpolated linearly.
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                 dtype=np.float64)


def to_gray(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(H, W)`` values → uint8 grey, windowed to [lo, hi]."""
    return (np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def to_heat(img: np.ndarray, hi: float) -> np.ndarray:
    """``(H, W)`` non-negative values → ``(H, W, 3)`` uint8 colour, 0…hi."""
    t = np.clip(img / hi, 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return ((1 - f) * _RAMP[i] + f * _RAMP[i + 1]).astype(np.uint8)


def sample_row(mri: np.ndarray, ct_hu: np.ndarray, sct_hu: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
    """MRI | CT | sCT | error map, each ``(H, W)``, as one ``(H, 4W, 3)`` uint8 image."""
    gray = [to_gray(mri, 0, 1), to_gray(ct_hu, *CT_WINDOW_HU), to_gray(sct_hu, *CT_WINDOW_HU)]
    panels = [np.repeat(g[..., None], 3, axis=-1) for g in gray]
    panels.append(to_heat(np.where(mask, np.abs(ct_hu - sct_hu), 0), ERROR_MAX_HU))
    return np.concatenate(panels, axis=1)


def save_png(img: np.ndarray, path: Path, scale: int = 1) -> None:
    im = Image.fromarray(img)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)
