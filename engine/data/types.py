"""Containers for paired MRI/CT data.

Shapes are explicit: volumes are ``(X, Y, Z)`` in canonical RAS voxel order, slice sets are
``(N, 1, H, W)`` with one axial slice per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PatientVolume:
    """One patient's co-registered MRI/CT volumes on the same voxel grid.

    Attributes:
        patient_id: stable identifier (never a name from a header).
        mri: ``(X, Y, Z)`` float32 MRI, raw scanner units (not yet normalised).
        ct_hu: ``(X, Y, Z)`` float32 CT in Hounsfield units.
        mask: ``(X, Y, Z)`` bool body mask.
        spacing_mm: voxel size ``(sx, sy, sz)`` in millimetres.
    """

    patient_id: str
    mri: np.ndarray
    ct_hu: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float, float]


@dataclass
class SliceSet:
    """Paired axial slices, ready for the network.

    Attributes:
        mri: ``(N, 1, H, W)`` float32, min-max normalised to [0, 1].
        ct_hu: ``(N, 1, H, W)`` float32 CT in HU, background −1024.
        mask: ``(N, 1, H, W)`` bool body mask.
        patient_ids: ``(N,)`` patient identifier of every slice.
    """

    mri: np.ndarray
    ct_hu: np.ndarray
    mask: np.ndarray
    patient_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))

    def __post_init__(self) -> None:
        n = len(self.mri)
        for name in ("ct_hu", "mask", "patient_ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"SliceSet.{name} has {len(getattr(self, name))} rows but mri has {n}"
                )
        if self.mri.shape != self.ct_hu.shape or self.mri.shape != self.mask.shape:
            raise ValueError(
                f"SliceSet shapes differ: mri {self.mri.shape}, ct_hu {self.ct_hu.shape}, "
                f"mask {self.mask.shape}"
            )

    def __len__(self) -> int:
        return len(self.mri)

    @property
    def patients(self) -> list[str]:
        """Distinct patient ids in order of first appearance."""
        return list(dict.fromkeys(self.patient_ids.tolist()))

    def select(self, index: np.ndarray) -> SliceSet:
        return SliceSet(
            self.mri[index], self.ct_hu[index], self.mask[index], self.patient_ids[index]
        )

    def for_patient(self, patient_id: str) -> SliceSet:
        return self.select(self.patient_ids == patient_id)

    @staticmethod
    def concat(parts: list[SliceSet]) -> SliceSet:
        if not parts:
            raise ValueError("cannot concatenate an empty list of SliceSets")
        return SliceSet(
            np.concatenate([p.mri for p in parts]),
            np.concatenate([p.ct_hu for p in parts]),
            np.concatenate([p.mask for p in parts]),
            np.concatenate([p.patient_ids for p in parts]),
        )


@dataclass
class CenterData:
    """One hospital's data: patients it trains on and held-out patients no one trains on."""

    name: str
    train: SliceSet
    test: SliceSet


@dataclass
class Cohort:
    """The federation's data: training centers plus an optional unseen center."""

    centers: list[CenterData]
    unseen: CenterData | None = None
    description: str = ""
