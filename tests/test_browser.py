"""The dashboard in a real browser (Debian chromium driven by Playwright).

A Streamlit server runs on a free port with its own runs folder. Screenshots and the
measured timings go to ``test-output/browser/``. Without chromium these tests are skipped,
except in CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
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
from engine.orchestration.jobs import cancel_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, create_run, open_run

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
    # Started as `make run` starts it (fedsct dashboard → app.serve), with its safety settings.
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "dashboard", "--port", str(port)],
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
    viewer = page.locator("[data-testid='stImage']").filter(has_text="MRI, slice 5 of 8")
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


# --------------------------------------------------------------------------- live demos

DEMOS = ("study-setup", "hardened", "poisoned-hospital")
# What the report's visible text must never show (config keys and raw values).
RAW_KEYS = ("mae_hu", "mae_ratio", "psnr_db", "malicious [", "update_noise", "noise_std",
            "center-0", "center-1", "fedmia", "per_center")


@pytest.fixture(scope="module")
def demos(server) -> dict[str, str]:
    """The three live demos of the Federation page, run to the end (one at a time)."""
    ids = {}
    for name in DEMOS:
        run = create_run(build_config(name), RUNS["root"], preset=name)
        t0 = time.perf_counter()
        assert execute(run) is not None, run.status()
        TIMINGS[f"demo_{name}_s"] = round(time.perf_counter() - t0, 1)
        ids[name] = run.run_id
    return ids


CHART_PROBLEMS_JS = """() => {
  const problems = [];
  const box = e => e.getBoundingClientRect();
  const inside = (b, o) => b.left >= o.left - 1 && b.right <= o.right + 1 &&
                           b.top >= o.top - 1 && b.bottom <= o.bottom + 1;
  const overlap = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 &&
                            a.top < b.bottom - 1 && b.top < a.bottom - 1;
  document.querySelectorAll('.js-plotly-plot').forEach((plot, i) => {
    const svg = box(plot.querySelector('.main-svg'));
    const texts = [...plot.querySelectorAll(
        '.xtick text, .ytick text, .g-xtitle text, .g-ytitle text, .legendtext, ' +
        '.annotation-text, .g-gtitle text')]
      .filter(t => t.textContent.trim() && box(t).width > 0);
    texts.forEach(t => {
      if (!inside(box(t), svg)) problems.push(`chart ${i}: "${t.textContent}" is cut off`);
    });
    for (let a = 0; a < texts.length; a++)
      for (let b = a + 1; b < texts.length; b++)
        if (overlap(box(texts[a]), box(texts[b])))
          problems.push(`chart ${i}: "${texts[a].textContent}" overlaps "${texts[b].textContent}"`);
  });
  return problems;
}"""

LOG_TICKS_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .filter(p => p.querySelector('.g-ytitle') &&
               p.querySelector('.g-ytitle').textContent.includes('(log)'))
  .map(p => [...p.querySelectorAll('.ytick text')].map(t => t.textContent))"""


def _download_report(page, server: str, run_id: str, folder: Path) -> Path:
    page.goto(f"{server}/report?report_run={run_id}")
    button = page.get_by_role("button", name="Report (HTML)")
    button.wait_for(timeout=60_000)
    with page.expect_download(timeout=60_000) as info:
        button.click()
    saved = folder / info.value.suggested_filename
    info.value.save_as(saved)
    return saved


@pytest.mark.parametrize("demo", ["poisoned-hospital", "study-setup"])
def test_report_charts_are_legible_and_in_plain_words(server, page, demos, tmp_path, demo):
    saved = _download_report(page, server, demos[demo], tmp_path)
    page.goto(saved.as_uri())
    page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=30_000)
    page.wait_for_timeout(500)  # plotly lays out its text after the first paint
    assert page.locator(".js-plotly-plot").count() >= 2
    assert page.evaluate(CHART_PROBLEMS_JS) == []
    for ticks in page.evaluate(LOG_TICKS_JS):  # every log tick written out, none repeated
        assert ticks and len(set(ticks)) == len(ticks), ticks
        values = [float(t.replace("−", "-")) for t in ticks]
        assert values == sorted(values), ticks
    visible = page.evaluate("() => document.body.innerText")  # the raw config stays folded
    assert [k for k in RAW_KEYS if k in visible] == []
    page.screenshot(path=str(OUT / f"report_{demo}.png"), full_page=True)


def test_poisoned_demo_names_the_attacker_and_compares_with_the_clean_run(server, page,
                                                                           demos):
    page.goto(f"{server}/federation?run={demos['poisoned-hospital']}")
    alert = page.locator("[data-testid='stAlert']").filter(has_text="This federation was "
                                                                    "attacked")
    alert.wait_for(timeout=60_000)
    text = alert.inner_text()
    assert "Hospital A was malicious" in text and "without attackers" in text
    page.get_by_text("than the same federation without attackers").first.wait_for(
        timeout=10_000)
    assert page.get_by_text("since the untrained model").count() == 0
    link = page.get_by_role("link", name="See the attack in detail")
    link.first.wait_for(timeout=10_000)
    assert link.count() == 1
    _no_exception(page)
    page.screenshot(path=str(OUT / "federation_poisoned.png"), full_page=True)


def test_compare_shows_the_change_in_membership_auc(server, page, demos):
    first, second = demos["study-setup"], demos["hardened"]
    page.goto(f"{server}/runs?runs_a={first}&runs_b={second}")
    table = page.locator("[data-testid='stTable']")
    table.wait_for(timeout=60_000)
    row = table.locator("tr").filter(has_text="Membership inference")
    text = row.inner_text()
    assert "AUC" in text and "→" in text, text
    dp = table.locator("tr").filter(has_text="Differential privacy").inner_text()
    assert "off" in dp and "ε" in dp, dp
    _no_exception(page)
    page.screenshot(path=str(OUT / "runs_compare.png"), full_page=True)


SCREENS = {"home": "", "data": "data", "federation": "federation?run={poisoned-hospital}",
           "membership": "membership?mia_run={study-setup}&mia_compare={hardened}",
           "inversion": "inversion", "poisoning": "poisoning?poi_run={poisoned-hospital}",
           "whatif": "whatif", "runs": "runs", "report": "report?report_run={study-setup}"}


@pytest.mark.parametrize("name", list(SCREENS))
def test_every_page_after_the_three_demos(server, page, demos, name):
    path = SCREENS[name]
    for demo, run_id in demos.items():
        path = path.replace("{" + demo + "}", run_id)
    # Streamlit scrolls inside its own container, so a tall window shows the whole page.
    page.set_viewport_size({"width": 1400, "height": 6000})
    page.goto(f"{server}/{path}")
    page.locator("h1").first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(1500)  # charts and images finish drawing
    _no_exception(page)
    (OUT / "pages").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT / "pages" / f"{name}.png"), full_page=True)


def _banner_round(page, banner, after: int, timeout_s: float = 180.0) -> int:
    """The round the job banner shows once it is past ``after`` (the banner refreshes itself
    every few seconds); fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = re.search(r"Round (\d+) of 200", banner.inner_text())
        if shown and int(shown[1]) > after:
            return int(shown[1])
        page.wait_for_timeout(500)
    raise AssertionError(f"the banner shows no round past {after} in {timeout_s:.0f} s: "
                         f"{banner.inner_text()!r}")


def test_a_job_started_in_one_browser_is_seen_and_queued_in_another(server, browser):
    first, second = (browser.new_context(viewport={"width": 1400, "height": 1000})
                     for _ in range(2))
    mine, theirs = first.new_page(), second.new_page()
    started: list[str] = []
    try:
        mine.goto(f"{server}/federation")
        mine.get_by_role("button", name="Start training").wait_for(timeout=60_000)
        mine.get_by_text("Experiment").first.wait_for(timeout=10_000)
        mine.locator("[data-testid='stSelectbox']").filter(has_text="Experiment").click()
        mine.get_by_role("option", name="Demo federation").click()
        mine.get_by_text("4 hospitals + an unseen one learn").wait_for(timeout=30_000)
        # 200 rounds (~10 min) outlast the test on any machine, so the job still runs when the
        # second browser looks and queues (the preset's 15 rounds can end first on a fast one).
        mine.get_by_text("Customise these settings").click()
        rounds = mine.get_by_role("spinbutton", name="Training rounds")
        rounds.fill("200")
        rounds.press("Enter")
        mine.get_by_text("200 rounds").first.wait_for(timeout=30_000)
        mine.get_by_role("button", name="Start training").click()
        mine.get_by_role("button", name="Stop this run").wait_for(timeout=60_000)
        started += [r["run_id"] for r in RunIndex(RUNS["root"]).list() if r["name"] == "demo"]

        # Another browser (another user) sees the job, with its progress, on any page.
        theirs.goto(server)
        banner = theirs.locator("[data-testid='stProgress']").filter(has_text="Running:")
        banner.wait_for(timeout=60_000)
        assert "demo" in banner.inner_text()
        # It moves on its own: the round it shows goes up without a click (a fixed round's
        # text can pass between two refreshes of the banner).
        seen = _banner_round(theirs, banner, after=-1)
        _banner_round(theirs, banner, after=seen)
        theirs.goto(f"{server}/federation")
        queue_button = theirs.get_by_role("button", name="Queue training")
        queue_button.wait_for(timeout=60_000)
        before = {r["run_id"] for r in RunIndex(RUNS["root"]).list()}
        queue_button.click()
        theirs.get_by_text("Waiting for its turn in the job queue").first.wait_for(
            timeout=60_000)
        waiting = [r for r in RunIndex(RUNS["root"]).list() if r["run_id"] not in before]
        assert [r["state"] for r in waiting] == ["queued"], waiting
        started += [r["run_id"] for r in waiting]
        _no_exception(theirs)
        theirs.screenshot(path=str(OUT / "queued_in_second_browser.png"), full_page=True)
    finally:
        for run_id in reversed(started):
            cancel_job(open_run(run_id, RUNS["root"]), grace_s=30)
        first.close()
        second.close()
