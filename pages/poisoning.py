"""Poisoning: what can a malicious hospital do to the shared model, and which rule stops it?"""

from __future__ import annotations

import streamlit as st

from app.state import persisted, remember, session_owner
from app.views.common import AGGREGATOR_HELP, RULE_NAMES, STATE_TEXT, hospital_name
from app.views.poisoning import (
    BASE_PRESET,
    EMPTY,
    INTRO,
    KIND_HELP,
    KIND_NAMES,
    METRIC_SHORT,
    METRICS,
    NOISE_KINDS,
    SWEEP_COMMAND,
    SWEEP_TEXT,
    TARGET_NAMES,
    PoisonRun,
    attack_sets,
    cell_words,
    clean_rows,
    curves_figure,
    detection_figure,
    detection_sentence,
    grid,
    history_curves,
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
    training_words,
    verdict,
)
from app.views.results import Sweep, list_runs, read_sweep, sweep_minutes
from app.widgets import (
    attack_run,
    job_progress,
    queued_behind,
    refusal_shown,
    remembered_run,
    study_box,
    verdict_box,
)
from engine.core.config import AGGREGATORS, ConfigError
from engine.core.run_folder import ACTIVE
from engine.orchestration.jobs import cancel_job, start_job
from engine.orchestration.presets import POISON_LEVELS, build_config
from engine.orchestration.store import find_finished_run, runs_root

RUN_PARAM = "poi_run"
FLASH = "poi_flash"
SWEEP_NAMES = ("poison-paper", "poison-model", "poison-data-factors")
HOSPITALS = [0, 1, 2, 3]
STUDY_RULES = ("fedavg", "fedprox", "fedmedian", "trimmed_mean")


def _attackers(value: str) -> str:
    """``"center-0 center-2"`` (a sweep table's attackers) → ``"Hospital A + Hospital C"``."""
    return " + ".join(hospital_name(c) for c in str(value).split()) or "none"


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
                              format_func=lambda k: hospital_name(f"center-{k}"),
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


def _jobs() -> None:
    """The attack controls, the Run button (one run per rule, through the job queue) and the
    progress of the run started here."""
    job, cfg, status = remembered_run(RUN_PARAM, "the newest poisoning run instead")
    active = status.get("state") in ACTIVE
    with st.container(border=True):
        st.markdown("**Attack the federation** (4 hospitals, about 30 seconds per rule, in the "
                    "background: you may leave this page and come back)")
        plans, ok = _controls()
        found = {rule: find_finished_run(build_config(BASE_PRESET, sets=sets), runs_root())
                 for rule, sets in plans}
        reused = [f"{rule_name(r)} (`{f.run_id}`)" for r, f in found.items() if f]
        if reused:
            st.caption("Finished runs with exactly these settings exist for "
                       + ", ".join(reused) + ": Run shows them instead of training again.")
        behind = queued_behind()
        if st.button("Run", key="poi_start", type="primary", icon=":material/play_arrow:",
                     disabled=not ok,
                     help=f"Queued behind {behind}: it starts when that job ends." if behind
                     else "One run per rule, one after the other, in the job queue."):
            todo = [(r, s) for r, s in plans if found[r] is None]
            started = []
            with refusal_shown("The attack"):
                for _, sets in todo:
                    started.append(start_job(build_config(BASE_PRESET, sets=sets),
                                             preset=BASE_PRESET, owner=session_owner()))
            if len(started) < len(todo):  # refused, said above; the banner shows any started
                return
            remember(RUN_PARAM, started[0].run_id if started else found[plans[0][0]].run_id)
            st.session_state[FLASH] = (
                "Showing the finished runs with these settings; nothing had to be trained."
                if not started else
                f"Queued the attack under {', '.join(rule_name(r) for r, _ in todo)}: the runs "
                "go one after the other" + (f", after {behind}" if behind else "")
                + "; the banner at the top shows their progress.")
            st.rerun()
        if job and cfg and active:
            st.markdown(f"The attack under **{rule_name(cfg.federation.aggregator)}** (run id "
                        f"`{job.run_id}`) is {STATE_TEXT[status['state']]}; its results appear "
                        "below when it finishes.")
            job_progress(job.run_id, cfg.federation.rounds)
            st.caption("After the last round the same federation is trained again without "
                       "attackers (or a finished clean run is reused), for comparison.")
            if st.button("Stop this run", icon=":material/stop_circle:", key="poi_cancel"):
                with st.spinner("Stopping: the current hospital finishes its step first…"):
                    cancel_job(job, grace_s=15)
                st.rerun()
        elif status.get("state") in ("failed", "interrupted"):
            st.error(f"The last attack run did not finish: "
                     f"{status.get('error') or 'unknown error'}. The Runs page can resume it; "
                     "the Federation page shows its log.")


# --------------------------------------------------------------------------- one run


def _verdicts(run: PoisonRun, runs: list[PoisonRun]) -> None:
    """Every rule's verdict on this attack, worst first (the picked run among them)."""
    group = sorted(same_attack(run, runs), key=lambda r: -(r.poison.mae_ratio_mean
                                                          or r.poison.cells[0].mae_ratio))
    for r in group:
        base = r.poison.baseline_run
        verdict_box(verdict(r.poison, r.rule),
                    f"**{rule_name(r.rule)}**. The clean comparison is "
                    + (f"the finished run `{base}`" if base else
                       "the same federation trained without attackers for this run (not "
                       "stored as a run of its own)") + f". Attack: {r.attack}.")


def _curves(run: PoisonRun, runs: list[PoisonRun], metric: str) -> None:
    st.markdown("#### How the shared model fared, round by round")
    group = same_attack(run, runs)
    lines = [(r.rule, r.history, r.poison.baseline_history) for r in group]
    st.plotly_chart(curves_figure(lines, metric), key="poi_curves")
    st.caption(f"Solid lines: the shared model's {METRIC_SHORT[metric]} under this attack, one "
               "line per rule; dashed lines of the same colour: the same federation without "
               "attackers, so the gap between a pair is the harm done.")
    have = {r.rule for r in group}
    missing = [rule_name(a) for a in STUDY_RULES if a not in have]
    if missing:
        st.caption(f"No finished run of this attack under {', '.join(missing)} yet: choose the "
                   "same attack above with those rules and press Run to add them.")


def _detection(run: PoisonRun) -> None:
    st.markdown("#### Could the server spot the attacker?")
    det = run.poison.detection
    names = run.poison.malicious_names
    if det.per_round:
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
                    f"{sweep_minutes(sweep.name)} minutes).")
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
    kinds = [k for k in NOISE_KINDS if any(r.poison_kind == k for r in bad)]
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
    attackers = malicious_order([str(r.malicious) for r in bad])
    with c3:
        chosen_m = persisted(st.selectbox, "Malicious hospital(s) for the curves",
                             "poi_grid_malicious", attackers[0], options=attackers,
                             format_func=_attackers)
    cells = [r for r in bad if r.poison_kind == kind and r.noise_std is not None
             and float(r.noise_std) == level]
    rl, cl, mae, ratio = grid(cells, lambda r: _attackers(r.malicious),
                              lambda r: rule_name(str(r.aggregator)),
                              row_order=[_attackers(m) for m in attackers],
                              col_order=[rule_name(a) for a in RULE_NAMES])
    st.plotly_chart(ratio_heatmap(rl, cl, mae, ratio, "aggregation rule",
                                  "malicious hospital(s)"), key="poi_grid")
    st.caption(f"Each cell is one experiment with {kind_name(kind)} at {level_text(kind, level)}: "
               "the shared model's final error and how many times the same rule's clean error "
               "that is (green = unharmed, red = three times or worse); empty cells were not "
               "run, because the robust rules cannot outvote two attackers out of four.")

    curves = history_curves(sweep.curves())
    if curves is None:
        st.warning(f"`{sweep.folder / 'curves.json'}` is missing or damaged, so the study's "
                   "round-by-round curves can't be shown.")
    else:
        clean = clean_rows(rows)
        lines = []
        for r in sorted((r for r in cells if r.malicious == chosen_m),
                        key=lambda r: list(RULE_NAMES).index(r.aggregator)
                        if r.aggregator in RULE_NAMES else 99):
            base = clean.get(str(r.aggregator))
            lines.append((str(r.aggregator), curves.get(str(r.run_id)),
                          curves.get(str(base.run_id)) if base else None))
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


def _model_study(sweep: Sweep, _metric: str) -> None:
    st.markdown("### Model poisoning: crafted updates instead of noise")
    st.caption("One hospital sends an update crafted to do harm rather than a noisy one: "
               "reversed, amplified (model replacement) or 'A Little Is Enough', against each "
               "rule.")
    study_box(sweep, cell_words)
    if not _has_rows(sweep):
        return
    order = [kind_name(k) for k in ("sign_flip", "scaling", "alie")]
    rl, cl, mae, ratio = grid(poisoned(sweep.rows),
                              lambda r: kind_name(str(r.poison_kind)),
                              lambda r: rule_name(str(r.aggregator)),
                              row_order=order, col_order=[rule_name(a) for a in RULE_NAMES])
    st.plotly_chart(ratio_heatmap(rl, cl, mae, ratio, "aggregation rule", "attack"),
                    key="poi_model")
    st.caption("Each cell is one experiment: the shared model's final error with one hospital "
               "sending that crafted update, and how many times the same rule's clean error it "
               "is (green = unharmed, red = three times or worse).")


def _factor_study(sweep: Sweep, _metric: str) -> None:
    st.markdown("### Which image noise hurts: MRI, CT or both")
    st.caption("One hospital's images get strong noise (σ 1) on the MRI, the CT or both, "
               "with two training losses and two local optimisers, under FedAvg.")
    study_box(sweep, cell_words)
    if not _has_rows(sweep):
        return

    rl, cl, mae, ratio = grid(poisoned(sweep.rows),
                              lambda r: TARGET_NAMES.get(str(r.poison_target),
                                                         str(r.poison_target)),
                              training_words, row_order=list(TARGET_NAMES.values()))
    st.plotly_chart(ratio_heatmap(rl, cl, mae, ratio, "local training", "what is noised"),
                    key="poi_factors")
    st.caption("Each cell is one experiment: the shared model's final error when one hospital "
               "noises those images, and how many times the clean error of the same training "
               "setup it is (green = unharmed, red = three times or worse).")


# --------------------------------------------------------------------------- page


def _studies(sweeps: dict[str, Sweep], metric: str) -> None:
    for sweep_name, render in (("poison-paper", _paper_study), ("poison-model", _model_study),
                               ("poison-data-factors", _factor_study)):
        if sweep_name in sweeps:
            render(sweeps[sweep_name], metric)


def main() -> None:
    st.title("Poisoning")
    st.markdown(INTRO)
    sweeps: dict[str, Sweep] = {}
    for sweep_name in SWEEP_NAMES:
        try:
            sweeps[sweep_name] = read_sweep(sweep_name)
        except ConfigError as err:  # a study the engine no longer offers
            st.warning(f"The '{sweep_name}' study can't be shown: {err}")
    _jobs()
    if "poison-paper" in sweeps:
        with st.container(border=True):
            st.markdown(f"**The study grid** (`poison-paper`): {SWEEP_TEXT['poison-paper']}.")
            study_box(sweeps["poison-paper"], cell_words)
    if flash := st.session_state.pop(FLASH, None):
        st.success(flash)
    metric = persisted(st.radio, "Quality measure in the charts", "poi_metric", "mae_hu",
                       options=list(METRICS), format_func=lambda m: METRICS[m],
                       horizontal=True)
    found = poisoning_runs(list_runs())
    runs = found[0]
    shown = attack_run(found, RUN_PARAM, "Poisoned run", what="poisoning", empty=EMPTY,
                       help="Finished runs with malicious hospitals, newest first.")
    if shown is not None:
        _verdicts(shown, runs)
        _curves(shown, runs, metric)
        _detection(shown)
    _studies(sweeps, metric)


main()
