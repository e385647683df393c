"""What an open browser tab on a running job costs the dashboard's server, in CPU.

A page showing a running job redraws its progress on a timer (``app.views.common.POLL_S``);
every redraw runs page code in the dashboard's process, on the cores the job trains on. This
starts the dashboard (as ``make run`` does) on a temporary runs folder, queues a long job
through the dashboard's own queue, and measures the server's CPU time (its process and
children, from ``/proc``) over a window with 0, 1 and 2 headless chromium tabs open on the
job's Federation page.

    python -m benchmarks.tab_cost [--window 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from app.views.common import POLL_S
from benchmarks.dashboard import chromium, dashboard
from engine.orchestration import jobs
from engine.orchestration.presets import build_config

OUT = Path("test-output/benchmarks/tab_cost.json")
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
        todo += children.get(p, [])
    return total


def measure(window: float = 20.0, page_name: str = "federation") -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="tab-cost-"))
    out: dict[str, Any] = {"poll_s": POLL_S, "window_s": window, "page": page_name}
    os.environ["FEDSCT_RUNS_DIR"] = str(root)
    try:
        with dashboard(root) as (server, url):
            # Long enough for three windows: the study's demo recipe with many rounds.
            job = jobs.start_job(build_config("study-setup", sets=["federation.rounds=60"]),
                                 root, preset="study-setup")
            try:
                while job.status().state != "running":
                    time.sleep(0.5)
                page = (f"{url}/federation?run={job.run_id}" if page_name == "federation"
                        else f"{url}/{page_name}")
                with sync_playwright() as p:
                    browser = chromium(p)
                    tabs = []
                    for count in (0, 1, 2):
                        while len(tabs) < count:
                            tab = browser.new_page()
                            tab.goto(page, wait_until="networkidle")
                            tabs.append(tab)
                        time.sleep(5)  # the page's first draw is not part of the steady cost
                        start, t0 = _cpu_seconds(server.pid), time.perf_counter()
                        time.sleep(window)
                        share = (_cpu_seconds(server.pid) - start) / (time.perf_counter() - t0)
                        out[f"server_cpu_share_{count}_tabs"] = round(share, 4)
                        print(f"{count} tab(s): dashboard server at {share:.1%} of a core",
                              flush=True)
                    browser.close()
            finally:
                jobs.cancel_job(job, grace_s=5)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=20.0,
                        help="seconds of each measurement window")
    parser.add_argument("--page", default="federation",
                        help="the page the tabs show: federation (the job's own run, live "
                             "chart and banner) or another page's path, e.g. runs (banner)")
    args = parser.parse_args()
    print(json.dumps(measure(args.window, args.page), indent=1))


if __name__ == "__main__":
    main()
