"""The background job's thread governor: torch threads follow the cores other processes
leave free, within the queue's cap."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.orchestration import threads
from engine.orchestration.threads import ThreadGovernor

BURN = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeMachine:
    """``/proc/stat`` and this process's CPU time, advanced by hand (seconds of CPU)."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path, self.busy, self.idle, self.own, self.clock = tmp / "stat", 0.0, 0.0, 0.0, 0.0
        monkeypatch.setattr(threads, "PROC_STAT", self.path)
        monkeypatch.setattr(threads.time, "process_time", lambda: self.own)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.clock)
        self.write()

    def write(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        ticks = [self.busy * hz, 0, 0, self.idle * hz, 0, 0, 0, 0]
        self.path.write_text("cpu  " + " ".join(f"{t:.0f}" for t in ticks) + "\n")

    def advance(self, seconds: float, cores: int, own_busy: float, others_busy: float) -> None:
        self.clock += seconds
        self.own += own_busy * seconds
        self.busy += (own_busy + others_busy) * seconds
        self.idle += (cores - own_busy - others_busy) * seconds
        self.write()


@pytest.mark.parametrize(("cores", "cap", "others", "expected"), [
    (2, 2, 0.0, 2), (2, 2, 0.9, 1), (2, 2, 2.0, 1), (16, 8, 3.0, 8), (16, 16, 3.0, 13),
    (16, 16, 15.7, 1), (4, 4, 1.4, 3),
])
def test_threads_fill_the_free_cores_within_the_cap(tmp_path, monkeypatch, restore_threads,
                                                    cores, cap, others, expected) -> None:
    machine = FakeMachine(tmp_path, monkeypatch)
    governor = ThreadGovernor(cap, cores=cores)
    machine.advance(3.0, cores, own_busy=min(cores - others, governor.threads), others_busy=others)
    assert governor.update() == expected == torch.get_num_threads()
    machine.advance(0.5, cores, own_busy=1.0, others_busy=0.0)
    assert governor.update() == expected  # within the averaging window: no change


def test_a_competing_process_takes_threads_away(restore_threads) -> None:
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("needs at least 2 cores")
    governor = ThreadGovernor(cores)
    burners = [subprocess.Popen([sys.executable, "-c", BURN.format(s=4)]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # they are running
        assert governor.start(sample_s=1.5) == 1
    finally:
        for b in burners:
            b.wait(timeout=30)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThreadGovernor(0)
