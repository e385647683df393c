"""Gradient inversion: can a curious server rebuild a patient's images from a hospital's
update?"""

from __future__ import annotations

import streamlit as st

from app.inversion import (
    FLASH,
    budget_study,
    defense_study,
    defenses,
    factor_study,
    images,
)
from app.params import INVERSION_RUN
from app.views.inversion import (
    ADAM_DECODED,
    EMPTY,
    INTRO,
    STUDY_RESULT,
    InversionRun,
    budget_text,
    client_table,
    inversion_runs,
    verdict,
)
from app.views.results import list_runs
from app.widgets import attack_run, number_table, preset_jobs, verdict_box

PRESETS = (("inversion-easy", "Attack a vulnerable design"),
           ("dlg-paper", "The study's DLG attack"),
           ("ig-strong", "Strongest attack on the study's model"))


def _verdict(run: InversionRun) -> None:
    adam = any(p.objective == "adam_decoded" for p in run.inv.per_client.values())
    verdict_box(verdict(run.inv),
                f"Attack: {budget_text(run.inv)}. Run: {run.short_defenses}. {STUDY_RESULT}",
                ADAM_DECODED if adam else "")
    if run.loss == "l1":
        st.info("This federation trains with an L1 loss. With L1, a fake CT gets exactly zero "
                "gradient, so the attacker simulates training with a smooth stand-in, "
                "sqrt(d² + ε), and can learn the CT only through the signs of the errors.")


def _table(run: InversionRun) -> None:
    st.markdown("#### Per hospital: how close did the attacker get?")
    table, columns = client_table(run.inv)
    number_table(table, columns)
    st.caption("Each row is one hospital whose update the server inverted; SSIM and PSNR "
               "compare the rebuilt slices with the real ones (higher = more leaked). The null "
               "is what the same rebuilt slices score against unrelated patients' slices; "
               "the floor is what the attacker's average brain already scores.")


def main() -> None:
    st.title("Gradient inversion")
    st.markdown(INTRO)
    preset_jobs(
        INVERSION_RUN, PRESETS, kind="inversion", retry="inversion-easy",
        intro="**Run a new attack experiment** (in the background: you may leave this page "
              "and come back; the time each takes is under its button)",
        note="After the last round the server attacks the hospitals' uploads; that takes "
             "most of the time.")
    if flash := st.session_state.pop(FLASH, None):
        st.success(flash)
    shown = attack_run(inversion_runs(list_runs()), INVERSION_RUN, "Attacked run", what="attack",
                       empty=EMPTY, help="Finished runs that include a gradient-inversion "
                                         "attack, newest first.")
    if shown is not None:
        _verdict(shown)
        _table(shown)
        images(shown)
    defenses()
    factor_study()
    budget_study()
    defense_study()


main()
