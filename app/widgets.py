"""Streamlit widgets the pages share: the run picker, verdict boxes, job controls and
progress, metric cards and image panels. The words, tables and figures they show come from
:mod:`app.views`."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from app.params import FEDERATION_RUN, INVERSION_RUN, MEMBERSHIP_RUN, POISONING_RUN, RUNS_OPEN
from app.state import remember, remembered, session_owner
from app.views.common import (
    METRIC_HELP,
    PAGES_DIR,
    POLL_S,
    STATE_TEXT,
    UNSEEN_LABEL,
    Verdict,
    expected_words,
    hospital_name,
    plain,
    progress_text,
    upscale,
    user_allowed,
)
from app.views.report import Scorecard
from app.views.results import (
    RunRow,
    Sweep,
    read_sweep,
    read_sweep_folder,
    sweep_progress_text,
    sweep_state_text,
)
from engine.analyses.results import Metrics
from engine.core.config import ConfigError, ExperimentConfig
from engine.core.render import CT_WINDOW_HU, ERROR_MAX_HU, to_gray, to_heat
from engine.core.run_folder import RunFolder, RunStatus
from engine.orchestration import jobs, queue
from engine.orchestration.presets import build_config, preset_description
from engine.orchestration.store import RunIndex, open_run, runs_root
from engine.orchestration.sweep_catalogue import sweep_spec
from engine.orchestration.timings import expected_preset


def sign_in_required() -> bool:
    """Whether sign-in is configured (``[auth]`` in the app's secrets) and the user has not
    signed in yet."""
    try:
        configured = "auth" in st.secrets
    except (FileNotFoundError, st.errors.StreamlitSecretNotFoundError):
        configured = False
    return configured and not st.user.is_logged_in


def access_refused() -> str | None:
    """The signed-in account when sign-in is configured and the account is not in the
    ``allowed_users`` of ``fedsct dashboard --auth-config``; None when it may go on."""
    try:
        if "auth" not in st.secrets:
            return None
        allowed = list(st.secrets.get("access", {}).get("allowed_users", []))
    except (FileNotFoundError, st.errors.StreamlitSecretNotFoundError):
        return None
    email = str(st.user.get("email") or "")
    return None if user_allowed(email, allowed) else (email or "this account")


def sidebar(runs_folder: Path) -> None:
    st.sidebar.caption(
        "A safe sandbox: simulated hospitals jointly train a model that turns brain MRI "
        "into synthetic CT, so you can see how attacks and defenses behave."
    )
    st.sidebar.caption(f"Runs folder: `{runs_folder}`")


@st.fragment(run_every=POLL_S)
def job_progress(run_id: str, total_rounds: int) -> None:
    """Progress bar of a background run; reruns the whole page once the run ends."""
    progress_bar(run_id, total_rounds)


def remembered_run(param: str, instead: str) -> tuple[RunFolder | None,
                                                    ExperimentConfig | None, RunStatus | None]:
    """The run remembered under ``param`` (URL and session), its config and status. One that
    can't be opened is forgotten with a warning saying what is shown ``instead``."""
    run_id = remembered(param)
    if run_id:
        try:
            run = open_run(run_id)
            cfg = run.config()
        except (FileNotFoundError, OSError, ConfigError):
            st.warning(f"Run {plain(run_id)} can't be opened (deleted or damaged); showing "
                       f"{instead}.")
            remember(param, None)
        else:
            return run, cfg, run.status()
    return None, None, None


def preset_jobs(param: str, presets: tuple[tuple[str, str], ...], *, intro: str, kind: str,
                retry: str, note: str | None = None) -> bool:
    """Start buttons for attack presets (through the job queue: a button pressed while a job
    runs queues its run behind it) and the progress, stop button and failure of the run
    started here (remembered under ``param``).

    Returns whether that run is active.
    """
    job, cfg, status = remembered_run(param, f"the newest {kind} run instead")
    active = status is not None and status.active
    behind = queued_behind(job.path if job else None)
    runs = RunIndex().list()
    with st.container(border=True):
        st.markdown(intro)
        for col, (preset, label) in zip(st.columns(len(presets)), presets, strict=True):
            if col.button(label, key=f"start_{preset}",
                          help=(f"Queued behind {behind}: it starts when that job ends. "
                                if behind else "") + preset_description(preset)):
                try:
                    remember(param, jobs.start_job(build_config(preset), preset=preset,
                                                   owner=session_owner()).run_id)
                except ConfigError as err:  # a preset the engine no longer accepts
                    st.error(f"The '{preset}' preset can't be started: {err}")
                else:
                    st.rerun()
            col.caption(expected_words(expected_preset(preset, runs), start=True) + ".")
        if job and cfg and status and active:
            st.markdown(f"**{cfg.name or 'run'}** (run id `{job.run_id}`) is "
                        f"{STATE_TEXT[status.state]}; its results appear below when it "
                        "finishes.")
            job_progress(job.run_id, cfg.federation.rounds)
            if note:
                st.caption(note)
            if st.button("Stop this run", icon=":material/stop_circle:", key=f"cancel_{param}"):
                with st.spinner("Stopping: the current hospital finishes its step first…"):
                    jobs.cancel_job(job, grace_s=15)
                st.rerun()
        elif status and status.state in ("failed", "interrupted"):
            st.error(f"The last attack run did not finish: "
                     f"{status.error or 'unknown error'}. Resume it on the Runs page "
                     f"or try the '{retry}' preset again; the Federation page shows its log.")
    return active


def progress_bar(run_id: str, total_rounds: int) -> list[dict[str, Any]]:
    """Draw a run's progress and return its per-round records; once the run is no longer
    active, rerun the whole page instead (call from inside a polling fragment)."""
    try:
        run = open_run(run_id)
    except FileNotFoundError:
        st.rerun(scope="app")
    status = run.status()
    if not status.active:
        st.rerun(scope="app")
    records = run.metrics()
    started = any(j.state == "running" and Path(j.folder) == run.path
                  for j in queue.jobs(runs_root()))
    share, text = progress_text(status, records, total_rounds, started)
    st.progress(share, text=text)
    return records


def metric_cards(final: Metrics, reference: Metrics | None, since: str) -> None:
    """Final MAE/PSNR/SSIM with the change from ``reference`` (e.g. the untrained model, or
    the same federation without attackers), described by ``since``."""
    specs = (("Average error (MAE)", "mae_hu", "{:.0f} HU", "{:+.0f} HU", "inverse"),
             ("Image quality (PSNR)", "psnr_db", "{:.2f} dB", "{:+.2f} dB", "normal"),
             ("Structural similarity (SSIM)", "ssim", "{:.3f}", "{:+.3f}", "normal"))
    for col, (label, key, fmt, dfmt, colour) in zip(st.columns(3), specs, strict=True):
        value = getattr(final, key)
        # An ASCII sign on the delta string is what sets the arrow's direction.
        delta = dfmt.format(value - getattr(reference, key)) if reference else None
        col.metric(label, fmt.format(value), delta=delta, delta_color=colour,
                   delta_description=since if delta else None, help=METRIC_HELP[key],
                   border=True)


def center_table(per_center: dict[str, Metrics], unseen: Metrics | None,
                 malicious: list[str] = (), attack: str = "") -> None:
    """Quality per hospital, with each hospital's role (malicious ones named as such)."""
    rows = [{"Hospital": hospital_name(name),
             "Role": "malicious: " + attack.split(" sent ", 1)[-1] if name in malicious
             else "trained with the federation", **m.model_dump()}
            for name, m in per_center.items()]
    if unseen:
        rows.append({"Hospital": UNSEEN_LABEL, "Role": "test only: never shared any data",
                     **unseen.model_dump()})
    st.dataframe(
        pd.DataFrame(rows), hide_index=True,
        column_config={
            "mae_hu": st.column_config.NumberColumn("MAE (HU) ↓", format="%.0f",
                                                    help=METRIC_HELP["mae_hu"]),
            "psnr_db": st.column_config.NumberColumn("PSNR (dB) ↑", format="%.2f",
                                                     help=METRIC_HELP["psnr_db"]),
            "ssim": st.column_config.NumberColumn("SSIM ↑", format="%.3f",
                                                  help=METRIC_HELP["ssim"]),
        },
    )


@st.cache_data(max_entries=32)
def _load_samples(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def sample_images(npz: Path, trained: list[str]) -> None:
    """One row per hospital: MRI | real CT | synthetic CT | error map, with units."""
    if not npz.is_file():
        st.info("This run has no sample images.")
        return
    arrays = _load_samples(str(npz), npz.stat().st_mtime)
    names = list(dict.fromkeys(k.split("__")[0] for k in arrays))
    lo, hi = CT_WINDOW_HU
    captions = ["MRI (input)", f"Real CT ({lo:.0f} to {hi:.0f} HU)",
                f"Synthetic CT ({lo:.0f} to {hi:.0f} HU)",
                f"Error |CT − sCT| inside the head (0 to {ERROR_MAX_HU:.0f} HU, brighter = worse)"]
    for name in names:
        mri, ct, sct, mask = (arrays[f"{name}__{k}"] for k in ("mri", "ct_hu", "sct_hu", "mask"))
        error = to_heat(np.where(mask, np.abs(ct - sct), 0), ERROR_MAX_HU)
        panels = [to_gray(mri, 0, 1), to_gray(ct, lo, hi), to_gray(sct, lo, hi), error]
        title = hospital_name(name)
        if name not in trained:
            title = UNSEEN_LABEL if name.startswith("unseen") else f"{UNSEEN_LABEL} ({title})"
        st.markdown(f"**{title}** · one held-out slice")
        for col, img, cap in zip(st.columns(4), panels, captions, strict=True):
            col.image(upscale(img), caption=cap, width="stretch")


def report_page_error(page_title: str, err: Exception) -> Path:
    """Append ``err``'s traceback to ``<runs root>/dashboard-errors.log``; returns its path."""
    log = runs_root() / "dashboard-errors.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} page {page_title!r}\n")
            fh.write("".join(traceback.format_exception(err)))
    except OSError:
        pass  # an unwritable runs folder must not turn the message into a traceback
    return log


LIGHT_WORDS = {"green": "good", "orange": "watch", "red": "concern", "gray": "no data"}


def render_scorecards(cards: list[Scorecard], pages_dir: Path) -> None:
    """The scorecards side by side, each a bordered box with its light, value and run."""
    for col, card in zip(st.columns(len(cards)), cards, strict=True):
        box = col.container(border=True)
        box.markdown(f"**{card.title}**")
        if card.value is None:
            box.caption(card.detail)
            box.page_link(str(pages_dir / card.page), label="Open that page",
                          icon=":material/arrow_forward:")
            continue
        box.markdown(f":{card.colour}[● **{card.value}**] · {LIGHT_WORDS[card.colour]}")
        box.caption(card.detail)


@st.fragment(run_every=POLL_S)
def sweep_progress(read: Callable[[], Sweep], describe: Callable[[Sweep], str]) -> None:
    """Progress bar of a background study (``read()`` gives its state, ``describe`` the
    line under the bar); reruns the whole page once it ends."""
    sweep = read()
    if not sweep.active:
        st.rerun(scope="app")
    st.progress(min(sweep.cells_done / max(sweep.total, 1), 1.0), text=describe(sweep))


@contextlib.contextmanager
def refusal_shown(what: str) -> Iterator[None]:
    """Around a Start: a refusal (the queue is full, the machine cannot hold the run, a
    preset the engine no longer takes) is one red line on the page, not a page error."""
    try:
        yield
    except ConfigError as err:
        st.error(f"**{what} can't be started:** {err}.")


def damaged_warnings(paths: list[Path], what: str) -> None:
    """One warning per finished run whose ``what`` results (attack, audit) can't be read."""
    for path in paths:
        st.warning(f"`{path}` is missing or damaged, so that run's {what} results can't be "
                   "shown. Run the preset again.")


def attack_run(found: tuple[list[R], list[Path]], param: str, label: str, *, what: str,
               empty: str, help: str) -> R | None:
    """An attack page's run: a warning per damaged run, ``empty`` when there is none, else
    the picker's choice (``found`` is a view's ``(runs, damaged summary files)``)."""
    runs, damaged = found
    damaged_warnings(damaged, what)
    if not runs:
        st.info(empty)
        return None
    return run_picker(runs, param, label, help=help)


def study_section(name: str, title: str, cell_words: Callable[[str | None], str], *,
                  intro: str = "") -> Sweep | None:
    """A page's section on background study ``name``: the heading, ``intro`` and the study's
    description, start/continue/stop and progress, a warning per damaged file, and how many
    experiments have finished. Returns the study when it has rows to show."""
    st.markdown(f"#### {title}")
    try:
        sweep = read_sweep(name)
    except ConfigError as err:  # a study the engine no longer offers
        st.warning(f"The '{name}' study can't be shown: {err}")
        return None
    st.caption(intro + sweep_spec(name)["description"])
    study_box(sweep, cell_words)
    study_rows(sweep)
    return sweep if sweep.rows else None


def study_rows(sweep: Sweep) -> None:
    """Above a study's results: a warning per damaged file, and how many experiments have
    finished while it is not done."""
    for path in sweep.damaged:
        st.warning(f"`{path}` is damaged or unreadable; starting the study again rewrites it "
                   "(finished experiments are reused).")
    if sweep.rows and sweep.state != "done" and sweep.total > len(sweep.rows):
        st.caption(f"{len(sweep.rows)} of {sweep.total} experiments finished so far.")


def study_box(sweep: Sweep, cell_words: Callable[[str | None], str], *,
              start: Callable[[], Any] | None = None, command: str | None = None) -> None:
    """Start / continue / stop buttons of a background study (a sweep, through the job
    queue) and its progress; ``cell_words`` puts an experiment's label in words. ``start``
    queues it (default: the sweep of that name) and ``command`` is the same in a terminal."""
    name = sweep.name
    command = command or f"fedsct sweep --preset {name}"
    if sweep.active:
        sweep_progress(lambda: read_sweep_folder(sweep.folder, name, sweep.total),
                       lambda s: sweep_progress_text(s, cell_words))
        if st.button("Stop the study", key=f"sweep_stop_{name}", icon=":material/stop_circle:"):
            with st.spinner("Stopping: the experiment in progress is cancelled first…"):
                jobs.cancel_sweep(sweep.folder)
            st.rerun()
        st.caption("You may leave this page; the study goes on in the background.")
        return
    text = sweep_state_text(sweep)
    if sweep.state in ("failed", "ended"):
        st.error(text)
    else:
        st.caption(text)
    if sweep.state != "done":
        label = "Continue the study" if sweep.cells_done else "Start the study in the background"
        behind = queued_behind()
        if st.button(label, key=f"sweep_start_{name}", icon=":material/play_arrow:",
                     help=f"Queued behind {behind}: it starts when that job ends." if behind
                     else f"The same as `{command}` in a terminal; finished experiments "
                          "are reused."):
            with refusal_shown("The study"):
                (start or (lambda: jobs.start_sweep_job(name, owner=session_owner())))()
                st.rerun()


def number_table(table: pd.DataFrame, columns: dict[str, tuple[str, str, str]]) -> None:
    """``table`` with its number columns labelled, formatted and explained (``columns``:
    key → (label, printf format, help))."""
    st.dataframe(table, hide_index=True, column_config={
        k: st.column_config.NumberColumn(label, format=fmt, help=help_)
        for k, (label, fmt, help_) in columns.items()})


R = TypeVar("R", bound=RunRow)


NO_RUN = "— none —"  # what an optional run picker shows when no run is picked


def run_picker(rows: list[R], param: str, label: str, help: str, *,
               column: Any = st, optional: bool = False, exclude: str | None = None,
               default: str | None = None) -> R | None:
    """The one run picker: a select box over ``rows`` (newest first) whose choice is kept in
    the URL (``?param=run id``, so a reload or a shared link shows the same run). A run id in
    the URL that is not offered (active, failed, deleted) falls back to ``default``, else to
    the newest, or to nothing when ``optional``."""
    by_id = {r.run_id: r for r in rows if r.run_id != exclude}
    ids: list[str | None] = [*([None] if optional else []), *by_id]
    if not by_id:
        return None
    wanted = remembered(param) or default
    shown = wanted if wanted in by_id else ids[0]
    labels = [r.label for r in by_id.values()]
    # Two runs of one preset finished in the same minute read alike: the run id tells apart.
    names = {rid: r.label + (f" · {rid}" if labels.count(r.label) > 1 else "")
             for rid, r in by_id.items()}
    picked = column.selectbox(label, ids, index=ids.index(shown), help=help,
                              format_func=lambda rid: NO_RUN if rid is None else names[rid])
    if picked != shown:
        remember(param, picked)
        st.rerun()
    return by_id[shown] if shown else None


def verdict_box(v: Verdict, *captions: str, lead: str = "") -> Any:
    """A verdict as a bordered box: the coloured title, ``lead`` and the numbers it rests on,
    captions. Returns the box, for a chart or images that belong inside it."""
    box = st.container(border=True)
    with box:
        st.markdown(f"#### :{v.colour}-background[{v.title}]")
        if lead or v.detail:
            st.markdown(lead + v.detail)
        for caption in captions:
            if caption:
                st.caption(caption)
    return box


def queued_behind(own: Path | None = None) -> str | None:
    """What a new job would wait for ("study-setup and 2 more"), or None when it would start
    at once. The job of ``own`` (the run this page started) is called "your run", not
    counted as somebody else's."""
    waiting = queue.jobs(runs_root())
    if len(waiting) < queue.max_jobs():
        return None
    names = ["your run" if own is not None and Path(j.folder) == Path(own) else j.label
             for j in waiting]
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


SWEEP_PAGES = {"poison": "poisoning.py", "inversion": "inversion.py", "mia": "membership.py",
               "whatif": "whatif.py"}


def _job_page(job: queue.Job) -> tuple[str, dict[str, str]]:
    """The page that shows a job's results, and its query parameters."""
    folder = Path(job.folder)
    if job.kind == "sweep" and folder.parent.name == "studies":
        return "report.py", {}
    if job.kind == "sweep":
        name = folder.name.rsplit("-", 1)[0]
        page = next((p for prefix, p in SWEEP_PAGES.items() if name.startswith(prefix)),
                    "runs.py")
        return page, {}
    try:
        attacks = RunFolder(folder).config().attacks
    except (ConfigError, OSError):
        return "runs.py", {RUNS_OPEN: folder.name}
    for enabled, page, param in ((attacks.poisoning.enabled, "poisoning.py", POISONING_RUN),
                                 (attacks.inversion.enabled, "inversion.py", INVERSION_RUN),
                                 (attacks.membership.enabled, "membership.py", MEMBERSHIP_RUN)):
        if enabled:
            return page, {param: folder.name}
    return "federation.py", {FEDERATION_RUN: folder.name}


@st.fragment(run_every=POLL_S)
def job_banner() -> None:
    """On every page, for every session: the job that is running, how far it is, what waits
    behind it, and a link to where its results will be (refreshed every ``POLL_S``)."""
    jobs_now = queue.jobs(runs_root())
    running = [j for j in jobs_now if j.state == "running"]
    if not running:
        return
    waiting = len(jobs_now) - len(running)
    for job in running:
        with st.container(border=True):
            text = f"**Running:** {job.label}"
            if job.kind == "run":
                try:
                    run = RunFolder(Path(job.folder))
                    total = run.config().federation.rounds
                    # The queue runs this job: a run still marked queued is starting.
                    share, line = progress_text(run.status(), run.metrics(), total,
                                                started=True)
                except (ConfigError, OSError):
                    share, line = 0.0, "Starting…"
            else:
                sweep = read_sweep_folder(Path(job.folder))
                share = min(sweep.cells_done / max(sweep.total, 1), 1.0)
                line = (f"{sweep.cells_done} of {sweep.total} experiments finished."
                        if sweep.total else "Starting…")
            st.progress(share, text=f"{text}. {line}")
            page, params = _job_page(job)
            cols = st.columns([3, 1])
            if waiting:
                more = f"{waiting} more job waits" if waiting == 1 else \
                    f"{waiting} more jobs wait"
                cols[0].caption(f"{more} their turn; new ones are queued behind them.")
            cols[1].page_link(str(PAGES_DIR / page), label="Open its page", query_params=params,
                              icon=":material/open_in_new:")
