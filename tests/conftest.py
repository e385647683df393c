"""Shared fixtures. Tests use real torch/MONAI/Flower; torch runs on one thread here so a
background job started by a test does not fight the test process for the two cores. The
processes tests start (jobs, Flower nodes) get the OpenMP waiting that `fedsct` and the job
queue give theirs (engine.orchestration.threads.OPENMP_DEFAULTS), set before torch loads."""

from __future__ import annotations

import os

from engine.orchestration.threads import OPENMP_DEFAULTS

for _name, _value in OPENMP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402 - after the OpenMP variables, which torch reads when it loads
import torch  # noqa: E402

torch.set_num_threads(1)


# `make test-fast` leaves out what takes long: whole modules of integration tests (a browser,
# Flower, subprocesses, training runs, golden figures), and any other test that asks for a
# runs folder or a trained run (it runs the engine end to end).
SLOW_MODULES = {"test_browser", "test_flower", "test_resume", "test_study", "test_serve",
                "test_threads", "test_golden", "test_batched", "test_federation", "test_sweeps",
                "test_config_hostile", "test_cli"}
SLOW_FIXTURES = {"runs_dir", "trained", "runs"}


# `make test` runs the suite on two workers, a module at a time each (pytest-xdist's
# loadfile, in collection order): the longest modules start first so no worker is left with
# one at the end (test_flower alone takes about 8 min beside the other worker, most of it
# waiting on Flower's polling and timeouts).
LONGEST_FIRST = ("test_flower", "test_study", "test_browser", "test_backdoor")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        if module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {module: k for k, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on the suite's one torch thread: the `fedsct` commands called in
    process (``cli_main``) set the process's count from ``--threads`` / the environment, and
    a later test must not inherit it (its runs would record and compute with another count)."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A private runs root for the test (``FEDSCT_RUNS_DIR``)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(root))
    return root


@pytest.fixture
def finished_study(runs_dir):
    """``(name, rows, page)`` → the dashboard opened on ``page`` (``"poisoning.py"``) after
    sweep ``name`` finished with ``rows`` (its folder written as a sweep writes it: every
    cell done, the table)."""
    from streamlit.testing.v1 import AppTest

    from engine.core.run_folder import write_json_atomic
    from engine.orchestration.sweep_catalogue import sweep_cells
    from engine.orchestration.sweeps import sweep_folder, write_table

    def open_page(name: str, rows: list, page: str) -> AppTest:
        cells = sweep_cells(name)
        folder = sweep_folder(name)
        folder.mkdir(parents=True)
        write_json_atomic(folder / "sweep.json", {"state": "done", "cells_done": len(cells),
                                                  "cells": [{"label": c.label}
                                                            for c in cells]})
        write_table(folder, rows)
        at = AppTest.from_file(str(os.path.join(os.path.dirname(__file__), "..", "app",
                                                "main.py")), default_timeout=60)
        at.run()
        at.switch_page(f"../pages/{page}").run()
        assert not at.exception, at.exception
        return at

    return open_page
