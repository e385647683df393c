import numpy as np
import pytest

from engine.core.metrics import mae_hu, psnr_db, sct_metrics, ssim


def head(n=2, size=48):
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    rng = np.random.default_rng(0)
    ct = np.where(mask, 40 + 30 * rng.normal(size=(size, size)), -1024).astype(np.float32)
    return (np.repeat(ct[None, None], n, 0), np.repeat(mask[None, None], n, 0))


def test_perfect_prediction():
    ct, mask = head()
    assert mae_hu(ct, ct, mask) == 0
    assert psnr_db(ct, ct, mask) == float("inf")
    assert ssim(ct, ct, mask) == pytest.approx(1.0)


def test_offset_gives_known_mae_and_psnr_and_ignores_outside_mask():
    ct, mask = head()
    sct = ct + 100.0
    sct[~mask] = 3000.0  # outside the mask must not count
    assert mae_hu(ct, sct, mask) == pytest.approx(100.0)
    assert psnr_db(ct, sct, mask) == pytest.approx(20 * np.log10(4024 / 100.0))
    assert ssim(ct, sct, mask) < 1.0


def test_clipping_to_synthrad_range_for_psnr():
    ct, mask = head()
    sct = ct.copy()
    sct[mask] = 10_000.0  # clipped to 3000 for PSNR, not for MAE
    mse = ((np.clip(ct[mask], -1024, 3000) - 3000.0) ** 2).mean()
    assert psnr_db(ct, sct, mask) == pytest.approx(10 * np.log10(4024**2 / mse))


def test_patient_average():
    ct, mask = head(n=2)
    sct = ct.copy()
    sct[1] += 200.0
    ids = np.array(["a", "b"], dtype=object)
    m = sct_metrics(ct, sct, mask, ids)
    assert m["mae_hu"] == pytest.approx(100.0)
