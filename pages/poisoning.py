"""Poisoning: what can a malicious hospital do to the shared model, and which rule stops it?"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.poisoning import (
    BASE_PRESET,
    KIND_HELP,
    KIND_NAMES,
    METRIC_SHORT,
    METRICS,
    NOISE_KINDS,
    RULE_NAMES,
    SWEEP_COMMAND,
    SWEEP_MINUTES,
    SWEEP_TEXT,
    TARGET_NAMES,
    PoisonRun,
    attack_sets,
    clean_rows,
    curves_figure,
    detection_figure,
    detection_sentence,
    grid,
    kind_name,
    level_figure,
    level_text,
    levels_of,
    malicious_order,
    poisoned,
    poisoning_runs,
    ratio_heatmap,
    rule_name,
    same_attack,
    sweep_progress,
    sweep_state_text,
    verdict,
)
from app.results import Sweep, read_sweep
from app.state import persisted, remember, remembered
from app.ui import AGGREGATOR_HELP, job_progress, remembered_run
from engine.core.config import AGGREGATORS, ConfigError
from engine.core.run_folder import ACTIVE
from engine.orchestration.jobs import cancel_job, cancel_sweep, start_job, start_sweep_job
from engine.orchestration.presets import POISON_LEVELS, build_config
from engine.orchestration.store import find_finished_run, runs_root

RUN_PARAM = "poi_run"
FLASH = "poi_flash"
QUEUE = "poi_queue"  # [rule, overrides] still to run after the current job, in order
SWEEP_NAMES = ("poison-paper", "poison-model", "poison-data-factors")
HOSPITALS = [0, 1, 2, 3]
STUDY_RULES = ("fedavg", "fedprox", "fedmedian", "trimmed_mean")


def _attackers(value: str) -> str:
    """``"center-0 center-2"`` (a sweep table's attackers) → ``"center-0 + center-2"``."""
    return " + ".join(str(value).split()) or "none"


# --------------------------------------------------------------------------- jobs


def _controls() -> tuple[list[tuple[str, list[str]]], bool]:
    """The attack chosen in the controls as (rule, overrides of poison-base) per rule; False
    when the choice can't run (an error says why)."""
    left, right = st.columns(2)
    with left:
        kind = persisted(st.selectbox, "Attack", "poi_kind", "update_noise",
                         options=list(KIND_NAMES), format_func=kind_name,
                         help="What the malicious hospital(s) do.")
        st.caption(KIND_HELP[kind])
    std = None
    with right:
        if kind in NOISE_KINDS:
            low, high = POISON_LEVELS[kind]
            sigma = {"low": low, "high": high}
            level = persisted(st.radio, "Noise level", "poi_level", "high",
                              options=["low", "high", "custom"], horizontal=True,
                              format_func=lambda o: f"{o} (σ {sigma[o]:g})" if o in sigma
                              else "another value",
                              help="Standard deviation of the noise: on images in units of "
                                   "the full intensity range (1 = as large as the range), on "
                                   "the model per parameter.")
            std = sigma.get(level)
            if std is None:
                std = float(persisted(st.number_input, "Noise σ", "poi_std", float(high),
                                      min_value=0.0, max_value=100.0, step=0.001,
                                      format="%.4f"))
        else:
            st.caption("This attack has no noise level: the update itself is crafted.")
    left, right = st.columns(2)
    with left:
        malicious = persisted(st.multiselect, "Malicious hospital(s)", "poi_malicious", [0],
                              options=HOSPITALS,
                              format_func=lambda k: f"center-{k}",
                              help="The federation has 4 hospitals; at least one must stay "
                                   "honest.")
    with right:
        rules = persisted(st.multiselect, "Aggregation rules to compare", "poi_rules",
                          ["fedavg", "fedmedian"], options=list(AGGREGATORS),
                          format_func=rule_name,
                          help="How the server combines the hospitals' updates; each rule is "
                               "one run. " + " ".join(f"{rule_name(a)}: {h}"
                                                      for a, h in AGGREGATOR_HELP.items()))
    if not malicious or not rules:
        st.warning("Pick at least one malicious hospital and one aggregation rule.")
        return [], False
    plans, ok = [], True
    for rule in rules:
        sets = attack_sets(kind, malicious, rule, std)
        try:
            build_config(BASE_PRESET, sets=sets)
        except ConfigError as err:
            st.error(f"{rule_name(rule)} can't run this attack: {err}")
            ok = False
        else:
            plans.append((rule, sets))
    return plans, ok


def _start_next(queue: list[Any]) -> None:
    """Start the next rule of the queue that has no finished run yet."""
    while queue:
        _rule, sets = queue.pop(0)
        try:
            cfg = build_config(BASE_PRESET, sets=sets)
        except ConfigError:
            continue
        if find_finished_run(cfg, runs_root()) is not None:
            continue
        st.session_state[QUEUE] = queue
        remember(RUN_PARAM, start_job(cfg, preset=BASE_PRESET).run_id)
        st.rerun()
    st.session_state.pop(QUEUE, None)


def _jobs(sweep_busy: bool) -> bool:
    """The attack controls, the Run button and the progress of the run started here;
    returns whether a run is active (one job at a time)."""
    job, cfg, status = remembered_run(RUN_PARAM, "the newest poisoning run instead")
    state = status.get("state")
    queue = list(st.session_state.get(QUEUE) or [])
    if queue and state == "done":
        _start_next(queue)
    elif queue and state not in ACTIVE:  # stopped or failed: the rest is dropped
        st.session_state.pop(QUEUE, None)
        queue = []
    active = state in ACTIVE
    with st.container(border=True):
        st.markdown("**Attack the federation** (4 hospitals, about 30 seconds per rule, in the "
                    "background: you may leave this page and come back)")
        plans, ok = _controls()
        found = {}
        for rule, sets in plans:
            found[rule] = find_finished_run(build_config(BASE_PRESET, sets=sets), runs_root())
        reused = [f"{rule_name(r)} (`{f.run_id}`)" for r, f in found.items() if f]
        if reused:
            st.caption("Finished runs with exactly these settings exist for "
                       + ", ".join(reused) + ": Run shows them instead of training again.")
        busy = active or sweep_busy
        if st.button("Run", key="poi_start", type="primary", icon=":material/play_arrow:",
                     disabled=busy or not ok,
                     help="One job at a time: wait for the current run or study, or stop it."
                     if busy else "One run per rule, one after the other."):
            todo = [(r, s) for r, s in plans if found[r] is None]
            if not todo:
                remember(RUN_PARAM, found[plans[0][0]].run_id)
                st.session_state[FLASH] = ("Showing the finished runs with these settings; "
                                           "nothing had to be trained.")
            else:
                rule, sets = todo[0]
                job = start_job(build_config(BASE_PRESET, sets=sets), preset=BASE_PRESET)
                remember(RUN_PARAM, job.run_id)
                st.session_state[QUEUE] = [[r, s] for r, s in todo[1:]]
                st.session_state[FLASH] = (f"Started the attack under {rule_name(rule)}; its "
                                           "progress is shown above.")
            st.rerun()
        if job and cfg and active:
            st.markdown(f"Running the attack under **{rule_name(cfg.federation.aggregator)}** "
                        f"(run id `{job.run_id}`); its results appear below when it finishes.")
            if queue:
                st.caption("Then, one after the other: "
                           + ", ".join(rule_name(r) for r, _ in queue) + ".")
            job_progress(job.run_id, cfg.federation.rounds)
            st.caption("After the last round the same federation is trained again without "
                       "attackers (or a finished clean run is reused), for comparison.")
            if st.button("Stop this run", icon=":material/stop_circle:", key="poi_cancel"):
                with st.spinner("Stopping: the current hospital finishes its step first…"):
                    cancel_job(job, grace_s=15)
                st.session_state.pop(QUEUE, None)
                st.rerun()
        elif state == "failed":
            st.error(f"The last attack run failed: {status.get('error') or 'unknown error'}. "
                     "The Federation page shows its log.")
    return active


def _sweep_box(sweep: Sweep, busy: bool) -> None:
    """Start / stop buttons of a background study and its progress."""
    name = sweep.name
    if sweep.active:
        sweep_progress(name)
        if st.button("Stop the study", key=f"sweep_stop_{name}", icon=":material/stop_circle:"):
            with st.spinner("Stopping: the experiment in progress is cancelled first…"):
                cancel_sweep(sweep.folder)
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
        if st.button(label, key=f"sweep_start_{name}", icon=":material/play_arrow:",
                     disabled=busy,
                     help="One job at a time: wait for the current run or study, or stop it."
                     if busy else f"The same as `{SWEEP_COMMAND.format(name=name)}` in a "
                                  "terminal; finished experiments are reused."):
            start_sweep_job(name)
            st.rerun()


# --------------------------------------------------------------------------- one run


def _pick(runs: list[PoisonRun]) -> PoisonRun:
    """The run to show, kept in the URL (``?poi_run=``)."""
    by_id = {r.run.run_id: r for r in runs}
    ids = list(by_id)
    wanted = remembered(RUN_PARAM)
    # An active or failed run stays remembered (for its progress) while the newest is shown.
    shown = wanted if wanted in by_id else ids[0]
    picked = st.selectbox("Poisoned run", ids, index=ids.index(shown),
                          format_func=lambda rid: by_id[rid].label,
                          help="Finished runs with malicious hospitals, newest first.")
    if picked != shown:
        remember(RUN_PARAM, picked)
        st.rerun()
    return by_id[shown]


def _verdict(run: PoisonRun) -> None:
    v = verdict(run.poison, run.aggregator)
    with st.container(border=True):
        st.markdown(f"#### :{v.colour}-background[{v.title}]")
        st.markdown(v.detail)
        base = run.poison.get("baseline_run")
        st.caption("The clean comparison is "
                   + (f"the finished run `{base}`" if base else
                      "the same federation trained without attackers for this run (not "
                      "stored as a run of its own)")
                   + f". Attack: {run.attack}.")


def _curves(run: PoisonRun, runs: list[PoisonRun], metric: str) -> None:
    st.markdown("#### How the shared model fared, round by round")
    group = same_attack(run, runs)
    lines = [(r.aggregator, r.history, r.poison.get("baseline_history")) for r in group]
    st.plotly_chart(curves_figure(lines, metric), key="poi_curves")
    st.caption(f"Solid lines: the shared model's {METRIC_SHORT[metric]} under this attack, one "
               "line per rule; dashed lines of the same colour: the same federation without "
               "attackers, so the gap between a pair is the harm done.")
    have = {r.aggregator for r in group}
    missing = [rule_name(a) for a in STUDY_RULES if a not in have]
    if missing:
        st.caption(f"No finished run of this attack under {', '.join(missing)} yet: choose the "
                   "same attack above with those rules and press Run to add them.")


def _detection(run: PoisonRun) -> None:
    st.markdown("#### Could the server spot the attacker?")
    det = run.poison.get("detection") or {}
    names = list(run.poison.get("malicious_names") or [])
    if det.get("per_round"):
        st.plotly_chart(detection_figure(det, names), key="poi_detection")
        st.caption("Each line is one hospital: how far its upload lies from the middle "
                   "(coordinate-wise median) of all uploads, compared with a typical hospital's "
                   "distance (1× = typical); above the dotted line the server flags it (×).")
    st.markdown(detection_sentence(det, names))


# --------------------------------------------------------------------------- studies


def _has_rows(sweep: Sweep) -> bool:
    """Warn about damaged files; say the study has not run (False) or how far it got."""
    for path in sweep.damaged:
        st.warning(f"`{path}` is damaged or unreadable, so this study's results can't be "
                   "shown in full. Starting the study again rewrites it (finished experiments "
                   "are reused).")
    rows = sweep.rows or []
    if not rows:
        if sweep.folder / "table.json" not in sweep.damaged:
            st.info(f"This study has not been run yet: start it above or run "
                    f"`{SWEEP_COMMAND.format(name=sweep.name)}` in a terminal (about "
                    f"{SWEEP_MINUTES[sweep.name]} minutes).")
        return False
    if sweep.state != "done" and sweep.total > len(rows):
        st.caption(f"{len(rows)} of {sweep.total} experiments finished so far (the study is "
                   "still running, or was stopped).")
    return True


def _paper_study(sweep: Sweep, metric: str) -> None:
    st.markdown("### The study grid: every attacker, noise level and rule")
    if not _has_rows(sweep):
        return
    rows = sweep.rows or []
    bad = poisoned(rows)
    kinds = [k for k in NOISE_KINDS if any(r.get("poison_kind") == k for r in bad)]
    if not kinds:
        st.info("The study has no attacked experiments yet, only clean ones.")
        return
    c1, c2, c3 = st.columns(3)
    with c1:
        kind = persisted(st.selectbox, "Noise on", "poi_grid_kind", kinds[-1], options=kinds,
                         format_func=kind_name)
    levels = levels_of(rows, kind)
    with c2:
        level = persisted(st.selectbox, "Noise level", f"poi_grid_level_{kind}", levels[-1],
                          options=levels, format_func=lambda v: level_text(kind, v))
    attackers = malicious_order([str(r.get("malicious")) for r in bad])
    with c3:
        chosen_m = persisted(st.selectbox, "Malicious hospital(s) for the curves",
                             "poi_grid_malicious", attackers[0], options=attackers,
                             format_func=_attackers)
    cells = [r for r in bad if r.get("poison_kind") == kind and r.get("noise_std") is not None
             and float(r["noise_std"]) == level]
    rl, cl, mae, ratio = grid(cells, lambda r: _attackers(r.get("malicious")),
                              lambda r: rule_name(str(r.get("aggregator"))),
                              row_order=[_attackers(m) for m in attackers],
                              col_order=[rule_name(a) for a in RULE_NAMES])
    st.plotly_chart(ratio_heatmap(rl, cl, mae, ratio, "aggregation rule",
                                  "malicious hospital(s)"), key="poi_grid")
    st.caption(f"Each cell is one experiment with {kind_name(kind)} at {level_text(kind, level)}: "
               "the shared model's final error and how many times the same rule's clean error "
               "that is (green = unharmed, red = three times or worse); empty cells were not "
               "run, because the robust rules cannot outvote two attackers out of four.")

    curves = sweep.curves()
    if curves is None:
        st.warning(f"`{sweep.folder / 'curves.json'}` is missing or damaged, so the study's "
                   "round-by-round curves can't be shown.")
    else:
        clean = clean_rows(rows)
        lines = []
        for r in sorted((r for r in cells if r.get("malicious") == chosen_m),
                        key=lambda r: list(RULE_NAMES).index(r.get("aggregator"))
                        if r.get("aggregator") in RULE_NAMES else 99):
            base = clean.get(str(r.get("aggregator")))
            lines.append((str(r.get("aggregator")), curves.get(str(r.get("run_id"))),
                          curves.get(str(base.get("run_id"))) if base else None))
        if lines:
            st.plotly_chart(curves_figure(lines, metric), key="poi_grid_curves")
            st.caption(f"Round by round with {_attackers(chosen_m)} attacking: solid lines are "
                       "the attacked federation under each rule, dashed lines of the same "
                       "colour the same rule without attackers.")
        else:
            st.caption(f"The study has no experiment with {_attackers(chosen_m)} attacking at "
                       "this level.")
    st.plotly_chart(level_figure(rows, chosen_m, metric), key="poi_levels")
    st.caption(f"Each line is one rule: the shared model's final {METRIC_SHORT[metric]} with no "
               f"attack, then with weak and strong noise from {_attackers(chosen_m)}; a flat "
               "line means the rule shrugged the noise off.")


def _model_study(sweep: Sweep, busy: bool) -> None:
    st.markdown("### Model poisoning: crafted updates instead of noise")
    st.caption("One hospital sends an update crafted to do harm rather than a noisy one: "
               "reversed, amplified (model replacement) or 'A Little Is Enough', against each "
               "rule.")
    _sweep_box(sweep, busy)
    if not _has_rows(sweep):
        return
    order = [kind_name(k) for k in ("sign_flip", "scaling", "alie")]
    rl, cl, mae, ratio = grid(poisoned(sweep.rows),
                              lambda r: kind_name(str(r.get("poison_kind"))),
                              lambda r: rule_name(str(r.get("aggregator"))),
                              row_order=order, col_order=[rule_name(a) for a in RULE_NAMES])
    st.plotly_chart(ratio_heatmap(rl, cl, mae, ratio, "aggregation rule", "attack"),
                    key="poi_model")
    st.caption("Each cell is one experiment: the shared model's final error with one hospital "
               "sending that crafted update, and how many times the same rule's clean error it "
               "is (green = unharmed, red = three times or worse).")


def _factor_study(sweep: Sweep, busy: bool) -> None:
    st.markdown("### Which image noise hurts: MRI, CT or both")
    st.caption("One hospital's images get strong noise (σ 1) on the MRI, the CT or both, "
               "with two training losses and two local optimisers, under FedAvg.")
    _sweep_box(sweep, busy)
    if not _has_rows(sweep):
        return

    def training(r: dict[str, Any]) -> str:
        opt = "SGD" if r.get("optimizer") == "sgd" else "Adam"
        return f"{str(r.get('loss') or '').upper()} loss, {opt}"

    rl, cl, mae, ratio = grid(poisoned(sweep.rows),
                              lambda r: TARGET_NAMES.get(str(r.get("poison_target")),
                                                         str(r.get("poison_target"))),
                              training, row_order=list(TARGET_NAMES.values()))
    st.plotly_chart(ratio_heatmap(rl, cl, mae, ratio, "local training", "what is noised"),
                    key="poi_factors")
    st.caption("Each cell is one experiment: the shared model's final error when one hospital "
               "noises those images, and how many times the clean error of the same training "
               "setup it is (green = unharmed, red = three times or worse).")


# --------------------------------------------------------------------------- page


st.title("Poisoning")
st.markdown(
    "In a **poisoning attack**, one or more hospitals in the federation misbehave: they train "
    "on spoilt images or send back a spoilt model, to make the shared synthetic-CT model "
    "worse. The server combines the hospitals' updates with an **aggregation rule**; plain "
    "averaging (FedAvg) lets one bad update drag everyone along, while robust rules "
    "(FedMedian, trimmed mean) try to outvote it. Each attack is compared with the same "
    "federation trained without attackers.")

sweeps: dict[str, Sweep] = {}
for sweep_name in SWEEP_NAMES:
    try:
        sweeps[sweep_name] = read_sweep(sweep_name)
    except ConfigError as err:  # a study the engine no longer offers
        st.warning(f"The '{sweep_name}' study can't be shown: {err}")
sweep_busy = any(s.active for s in sweeps.values())
run_active = _jobs(sweep_busy)
busy = run_active or sweep_busy
if "poison-paper" in sweeps:
    with st.container(border=True):
        st.markdown(f"**The study grid** (`poison-paper`): {SWEEP_TEXT['poison-paper']}.")
        _sweep_box(sweeps["poison-paper"], busy)
flash = st.session_state.pop(FLASH, None)
if flash:
    st.success(flash)

metric = persisted(st.radio, "Quality measure in the charts", "poi_metric", "mae_hu",
                   options=list(METRICS), format_func=lambda m: METRICS[m], horizontal=True)
runs, damaged = poisoning_runs()
for path in damaged:
    st.warning(f"`{path}` is missing or damaged, so that run's poisoning results can't be "
               "shown.")
if not runs:
    st.info("No poisoning results yet. Choose an attack above and press Run (about 30 seconds "
            "per rule), or start the study grid.")
else:
    shown = _pick(runs)
    try:
        _verdict(shown)
        _curves(shown, runs, metric)
        _detection(shown)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        # Results written by an older engine lack fields: explain instead of a traceback.
        st.warning(f"`{shown.run.path / 'summary.json'}` has poisoning results in a format this "
                   "page can't read. Run the attack again.")
for sweep_name, render, arg in (("poison-paper", _paper_study, metric),
                                 ("poison-model", _model_study, busy),
                                 ("poison-data-factors", _factor_study, busy)):
    if sweep_name not in sweeps:
        continue
    try:
        render(sweeps[sweep_name], arg)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        # A table written by an older engine lacks columns: explain instead of a traceback.
        st.warning(f"`{sweeps[sweep_name].folder / 'table.json'}` has results in a format this "
                   "page can't read. Starting the study again rewrites it (finished experiments "
                   "are reused).")
