import numpy as np
import pytest

from engine.data.phantom import center_profile, phantom_cohort, phantom_patient


def test_patient_is_deterministic_and_depends_on_seed():
    a = phantom_patient(3, 1, 2, image_size=32, n_slices=3)
    b = phantom_patient(3, 1, 2, image_size=32, n_slices=3)
    c = phantom_patient(4, 1, 2, image_size=32, n_slices=3)
    np.testing.assert_array_equal(a.mri, b.mri)
    np.testing.assert_array_equal(a.ct_hu, b.ct_hu)
    assert not np.allclose(a.mri, c.mri)


@pytest.mark.parametrize("size", [32, 128, 256])
def test_slices_have_units_shapes_and_anatomy(size):
    s = phantom_patient(0, 0, 0, image_size=size, n_slices=2)
    assert s.mri.shape == s.ct_hu.shape == s.mask.shape == (2, 1, size, size)
    assert s.mri.dtype == np.float32 and s.ct_hu.dtype == np.float32 and s.mask.dtype == bool
    assert 0.0 <= s.mri.min() and s.mri.max() <= 1.0
    assert (s.ct_hu[~s.mask] == -1024).all(), "background must be −1024 HU"
    inside = s.ct_hu[s.mask]
    # Brain tissue around 0–60 HU dominates; skull reaches well above 500 HU; fat below 0.
    assert 0 < np.median(inside) < 80
    assert inside.max() > 500
    assert (inside < -50).any()
    assert 0.2 < s.mask.mean() < 0.8


def test_centers_differ_in_scanner_profile_and_images():
    p0, p1 = center_profile(0, 0), center_profile(0, 1)
    assert p0 != p1
    a = phantom_patient(0, 0, 0, image_size=64, n_slices=1, profile=p0)
    b = phantom_patient(0, 0, 0, image_size=64, n_slices=1, profile=p1)
    assert np.abs(a.mri - b.mri).mean() > 0.01


def test_cohort_split_is_patient_level_with_unseen_center():
    c = phantom_cohort(0, centers=3, patients_per_center=2, heldout_per_center=1,
                       slices_per_patient=2, image_size=32, unseen_center=True,
                       unseen_patients=2)
    assert len(c.centers) == 3
    for center in c.centers:
        assert len(center.train.patients) == 2 and len(center.test.patients) == 1
        assert not set(center.train.patients) & set(center.test.patients)
        assert len(center.train) == 4
    all_train = {p for center in c.centers for p in center.train.patients}
    assert c.unseen is not None and len(c.unseen.train) == 0
    assert len(c.unseen.test.patients) == 2
    assert not all_train & set(c.unseen.test.patients)
