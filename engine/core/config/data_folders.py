"""Cheap checks of the data folders a config names (the run reads the images)."""

from __future__ import annotations

import os
from pathlib import Path

from engine.core.config.echo import (
    _has_control_chars,
)

# A data root is scanned for a patient folder up to this many entries (a cheap check, not
# a load: the run reads the images).
MAX_SCANNED_ENTRIES = 10_000

_IMAGES = (("mr.nii.gz", "mr.nii"), ("ct.nii.gz", "ct.nii"))


def _missing_images(folder: Path) -> list[str]:
    return [names[0] for names in _IMAGES if not any((folder / n).is_file() for n in names)]


def _patient_folder_problem(path: str) -> str | None:
    """Why ``path`` is not a patient folder holding ``{mr,ct}.nii(.gz)``, or None. Only
    names are checked; the run reads the images."""
    if _has_control_chars(path):
        return "holds a control character"
    folder = Path(path)
    try:
        if not folder.is_dir():
            return "is not a folder"
        missing = _missing_images(folder)
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    return f"lacks {' and '.join(missing)}" if missing else None


def _data_root_problem(path: str) -> str | None:
    """Why ``path`` is not a SynthRAD2023-layout root ``<path>/<ID>/{mr,ct}.nii(.gz)`` (the
    ID's third character is the center letter), or None. A cheap scan that stops at the
    first patient folder; incomplete folders are the run's to report."""
    if _has_control_chars(path):
        return "holds a control character"
    root = Path(path)
    try:
        if not root.exists():
            return "does not exist"
        if not root.is_dir():
            return "is not a folder"
        with os.scandir(root) as entries:
            for k, entry in enumerate(entries):
                if k >= MAX_SCANNED_ENTRIES:
                    return (f"holds no patient folder among its first {MAX_SCANNED_ENTRIES} "
                            "entries")
                name = entry.name
                if (len(name) >= 3 and name[2].isalpha() and entry.is_dir()
                        and not _missing_images(Path(entry.path))):
                    return None
        hint = "; did you mean its brain subfolder?" if (root / "brain").is_dir() else ""
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    return ("holds no patient folder: expected <path>/<ID>/mr.nii.gz and ct.nii.gz (or .nii), "
            f"IDs like 1BA001 with the center letter third{hint}")
