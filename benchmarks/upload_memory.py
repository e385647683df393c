"""What uploads cost the dashboard's server in memory, and what it gets back.

Starts the dashboard (as ``make run`` does) on a temporary runs folder and, in headless
chromium, uploads two MRI/CT pairs of the largest size the loader accepts (256³ float64,
128 MiB per file) and a mask on the Data page, one pair after the other. Then either saves
the second pair (``--then save``) or closes the tab (``--then close``), and reads the
server's resident memory (``VmRSS``) at each step, up to ``--wait`` seconds after the tab
closed (a session without a browser is closed after ``app.serve.ABANDONED_AFTER_S``).

    python -m benchmarks.upload_memory [--then save|close] [--wait 90]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from app.serve import ABANDONED_AFTER_S
from benchmarks.dashboard import chromium, dashboard

OUT = Path("test-output/benchmarks/upload_memory.json")
SHAPE = (256, 256, 256)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def _files(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {}
    for tag in ("a", "b"):
        for kind, scale, offset in (("mr", 1000.0, 0.0), ("ct", 2000.0, -1000.0)):
            path = files[f"{tag}_{kind}"] = folder / f"{tag}_{kind}.nii"
            nib.save(nib.Nifti1Image(rng.random(SHAPE) * scale + offset, np.eye(4)), path)
    files["mask"] = folder / "mask.nii"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), np.eye(4)), files["mask"])
    return files


def measure(then: str = "save", wait: float = 90.0) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    root, scratch = (Path(tempfile.mkdtemp(prefix=p)) for p in ("upmem-runs-", "upmem-files-"))
    files = _files(scratch)
    out: dict[str, Any] = {"then": then, "file_mib": files["a_mr"].stat().st_size / 2**20,
                           "abandoned_after_s": ABANDONED_AFTER_S, "rss_mib": {}}
    try:
        with dashboard(root) as (server, url):

            def note(step: str) -> None:
                out["rss_mib"][step] = _rss_mib(server.pid)
                print(f"{step}: server at {out['rss_mib'][step]:.0f} MiB", flush=True)

            with sync_playwright() as p:
                browser = chromium(p)
                tab = browser.new_page()
                tab.goto(f"{url}/data", wait_until="networkidle")
                time.sleep(3)
                note("page open")
                for tag in ("a", "b"):
                    boxes = tab.locator("input[type=file]")
                    for i, name in enumerate((f"{tag}_mr", f"{tag}_ct", "mask")):
                        boxes.nth(i).set_input_files(str(files[name]))
                    tab.get_by_text("belong together").wait_for(timeout=120_000)
                    time.sleep(3)
                    note(f"pair {tag} checked")
                if then == "save":
                    tab.get_by_role("button", name="Save this patient").click()
                    tab.get_by_text("Saved patient").wait_for(timeout=120_000)
                    time.sleep(3)
                    note("saved")
                browser.close()
            closed = time.monotonic()
            for at in (10.0, wait):
                time.sleep(max(0.0, at - (time.monotonic() - closed)))
                note(f"tab closed +{at:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--then", choices=("save", "close"), default="save",
                        help="after the second pair: save it, or just close the tab")
    parser.add_argument("--wait", type=float, default=90.0,
                        help="seconds after the tab closed for the last reading")
    args = parser.parse_args()
    print(json.dumps(measure(args.then, args.wait), indent=1))


if __name__ == "__main__":
    main()
