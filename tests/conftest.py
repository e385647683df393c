"""Shared fixtures. Tests use real torch/MONAI/Flower; torch runs on one thread here so a
background job started by a test does not fight the test process for the two cores.
``FEDSCT_TEST_THREADS`` sets another count: `make test` runs the numeric tests a second time
on 2 threads and AVX2 kernels, as another CPU would (see the Makefile)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("FEDSCT_TEST_THREADS", "1")))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A private runs root for the test (``FEDSCT_RUNS_DIR``)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(root))
    return root
