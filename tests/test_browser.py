"""The dashboard in a real browser (Debian chromium driven by Playwright).

A Streamlit server runs on a free port with its own runs folder. Screenshots and the
measured timings go to ``test-output/browser/``. Without chromium these tests are skipped,
except in CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "test-output" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TIMINGS: dict[str, float] = {}
RUNS: dict[str, Path] = {}  # the server's runs folder


def _browser_available() -> bool:
    if Path(CHROMIUM).is_file():
        return True
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"chromium is missing at {CHROMIUM}: `make test` installs it with "
                    "apt-get (needs root); in CI the browser tests must run")
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not _browser_available():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    port = _free_port()
    runs = tmp_path_factory.mktemp("browser-runs")
    RUNS["root"] = runs
    env = os.environ | {"FEDSCT_RUNS_DIR": str(runs)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            pytest.fail(f"streamlit did not start: {out[-2000:]}")
        time.sleep(0.3)
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "timings.json").write_text(json.dumps(TIMINGS, indent=1))


@pytest.fixture(scope="module")
def browser(server):

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors


def _no_exception(pg) -> None:
    assert pg.locator("[data-testid='stException']").count() == 0, \
        pg.locator("[data-testid='stException']").first.inner_text()


def test_home_paints_and_names_the_product(server, page):
    t0 = time.perf_counter()
    page.goto(server)
    page.get_by_role("heading", name="FedSCT Security Lab").wait_for(timeout=30_000)
    TIMINGS["home_first_paint_s"] = round(time.perf_counter() - t0, 2)
    _no_exception(page)
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT / "home.png"), full_page=True)


@pytest.mark.parametrize(("path", "heading"), [
    ("membership", "Membership inference"),
    ("inversion", "Gradient inversion"),
    ("poisoning", "Poisoning"),
])
def test_deep_link_opens_the_sub_page_first(server, page, path, heading):
    page.goto(f"{server}/{path}")
    page.get_by_role("heading", name=heading, exact=True).first.wait_for(timeout=30_000)
    _no_exception(page)
    page.screenshot(path=str(OUT / f"{path}.png"), full_page=True)


def test_smoke_run_from_the_browser_shows_its_learning_curve(server, page):
    page.goto(f"{server}/federation")
    page.get_by_role("heading", name="Federation", exact=True).wait_for(timeout=30_000)
    start = page.get_by_role("button", name="Start training")
    start.wait_for(timeout=30_000)
    t0 = time.perf_counter()
    start.click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    TIMINGS["smoke_start_to_first_chart_s"] = round(time.perf_counter() - t0, 2)
    # The run finishes and its final results replace the live view.
    page.get_by_role("heading", name="How good is the shared model?").wait_for(timeout=120_000)
    TIMINGS["smoke_start_to_results_s"] = round(time.perf_counter() - t0, 2)
    page.get_by_role("heading", name="Example images").wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Stop this run").count() == 0
    _no_exception(page)
    page.screenshot(path=str(OUT / "federation_smoke.png"), full_page=True)


def _head_nifti(folder: Path, shape: tuple[int, int, int] = (32, 32, 8)) -> tuple[Path, Path]:
    """A tiny ball-shaped head as mri.nii.gz (scanner units) and ct.nii.gz (HU)."""

    x, y, z = np.meshgrid(*(np.arange(s) - (s - 1) / 2 for s in shape), indexing="ij")
    r = np.sqrt(x**2 + y**2 + (z * 2) ** 2)
    mri = np.where(r < 10, 400.0, np.where(r < 13, 150.0, 0.0)).astype(np.float32)
    ct = np.where(r < 10, 35.0, np.where(r < 13, 1200.0, -1000.0)).astype(np.float32)
    paths = folder / "mri.nii.gz", folder / "ct.nii.gz"
    for path, data in zip(paths, (mri, ct), strict=True):
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return paths


def _open_data_page(server, page):
    page.goto(f"{server}/data")
    page.get_by_role("heading", name="Data & centers", exact=True).wait_for(timeout=30_000)
    inputs = page.locator("[data-testid='stFileUploaderDropzoneInput']")
    inputs.nth(1).wait_for(state="attached", timeout=30_000)
    # Upload only once the first script run is over: the phantom preview (one MRI and one CT
    # per default hospital) is its slowest part.
    page.get_by_text("CT (-200 to 1000 HU)").nth(3).wait_for(timeout=60_000)
    return inputs


def test_upload_a_nifti_pair_and_see_it_previewed(server, page, tmp_path):
    mri, ct = _head_nifti(tmp_path)
    inputs = _open_data_page(server, page)
    inputs.nth(0).set_input_files(str(mri))
    inputs.nth(1).set_input_files(str(ct))
    viewer = page.locator("[data-testid='stImage']").filter(has_text="MRI, slice 4 of 7")
    viewer.locator("img").wait_for(timeout=60_000)
    assert viewer.locator("img").evaluate("img => img.naturalWidth") > 0
    page.get_by_text("32×32×8").wait_for(timeout=10_000)
    page.get_by_role("button", name="Save this patient").wait_for(timeout=10_000)
    _no_exception(page)
    viewer.scroll_into_view_if_needed()  # the page scrolls inside Streamlit's main container
    page.screenshot(path=str(OUT / "data_upload.png"), full_page=True)


def test_upload_a_broken_nifti_shows_a_readable_error(server, page, tmp_path):
    _, ct = _head_nifti(tmp_path)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(os.urandom(4000))
    inputs = _open_data_page(server, page)
    inputs.nth(0).set_input_files(str(broken))
    inputs.nth(1).set_input_files(str(ct))
    alert = page.locator("[data-testid='stAlert']").filter(has_text="cannot be used")
    alert.wait_for(timeout=60_000)
    assert "not a NIfTI file" in alert.inner_text()
    assert page.locator("[data-testid='stImage']").filter(has_text="MRI, slice").count() == 0
    _no_exception(page)
    alert.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "data_broken_upload.png"), full_page=True)


def test_download_the_report_of_a_finished_run(server, page, tmp_path):

    run = create_run(build_config("smoke", sets=["federation.rounds=1"]), RUNS["root"])
    assert execute(run) is not None
    page.goto(f"{server}/report?report_run={run.run_id}")
    page.get_by_role("heading", name="Report", exact=True).first.wait_for(timeout=30_000)
    button = page.get_by_role("button", name="Report (HTML)")
    button.wait_for(timeout=60_000)
    with page.expect_download(timeout=60_000) as info:
        button.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    html = saved.read_text()
    assert saved.name.startswith("report-") and saved.suffix == ".html"
    assert "<html" in html.lower() and run.run_id in html
    assert "data:image/png;base64," in html and "cdn.plot.ly" not in html
    _no_exception(page)
    page.screenshot(path=str(OUT / "report.png"), full_page=True)
