"""Shared fixtures. Tests use real torch/MONAI/Flower; torch runs on one thread here so a
background job started by a test does not fight the test process for the two cores."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A private runs root for the test (``FEDSCT_RUNS_DIR``)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(root))
    return root
