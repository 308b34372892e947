"""Rounds: start a Dreambooth round, follow it live, and see whether the loop is working."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from herdbook.app.context import action, model_status, project, reload_home
from herdbook.app.jobs_panel import jobs_panel
from herdbook.demo import is_demo_model
from herdbook.feedback.catalog import acceptance_by_round
from herdbook.feedback.curation import list_versions
from herdbook.jobs import submit
from herdbook.training.rounds import (
    comparison_grid,
    lineage,
    list_rounds,
    loss_histories,
    mark_interrupted_rounds,
    plan_round,
    resumable,
    training_available,
)


def start_form(home, store) -> None:
    defaults = home.config.training
    with action(store) as session:
        versions = [v.id for v in list_versions(session)][::-1]
        finished = [r["id"] for r in list_rounds(session) if r["status"] == "finished"][::-1]
    if not versions:
        st.info("Training needs a dataset version: rate images, then sync on the Dataset page.")
        return
    with st.form("start-round"):
        left, right = st.columns(2)
        version = left.selectbox("Dataset version", versions)
        start = right.selectbox(
            "Start from",
            ["newest round" if finished else "base", "base", *finished][: 2 + len(finished)] if finished else ["base"],
        )
        mode = left.radio(
            "Mode", ["full", "lora"], index=0 if defaults.mode == "full" else 1, horizontal=True, key="round_mode"
        )
        steps = right.number_input("Steps", min_value=1, max_value=20_000, value=defaults.steps, key="round_steps")
        lr = left.number_input(
            "Learning rate (blank: the mode's default)", value=None, format="%.2e", placeholder="5e-6 full · 1e-4 LoRA"
        )
        prior = right.checkbox("Prior preservation", value=defaults.prior_preservation)
        submitted = st.form_submit_button("Start round", type="primary", disabled=bool(training_available()))
    if submitted:
        start_from = {"newest round": "parent", "base": "base"}.get(start, start)
        with action(store) as session:
            record = plan_round(session, home.project, dataset=version, start_from=start_from, mode=mode, steps=int(steps),
                                learning_rate=lr, prior_preservation=prior)  # fmt: skip
            job = submit(session, home, "train", {"round_id": record.id})
        st.success(f"Round {record.id} queued as job {job.id}.")


def loss_chart(store) -> None:
    with action(store) as session:
        histories = loss_histories(session)
    if not histories:
        return
    st.subheader("Training loss")
    frame = pd.concat(
        [pd.DataFrame(history, columns=["step", name]).set_index("step") for name, history in histories.items()], axis=1
    )
    st.line_chart(frame.rolling(10, min_periods=1).mean(), x_label="step", y_label="loss (mean of 10 steps)")


def comparison(home, store) -> None:
    with action(store) as session:
        grid = comparison_grid(session, home.project)
    if not grid["columns"]:
        return
    st.subheader("Comparison at fixed prompts and seeds")
    st.caption(" · ".join(source["label"] for source in grid["columns"]) + ", left to right")
    for prompt in grid["prompts"]:
        st.text(prompt)
        for seed in grid["seeds"]:
            row = [(s["label"], s["images"].get((prompt, seed))) for s in grid["columns"]]
            shown = [(label, path) for label, path in row if path is not None and path.exists()]
            st.image(
                [str(path) for _, path in shown], caption=[f"{label} · seed {seed}" for label, _ in shown], width=192
            )


def acceptance(store) -> None:
    with action(store) as session:
        rows = acceptance_by_round(session)
    if not rows:
        return
    st.subheader("Share of candidates raters accepted, by round")
    frame = pd.DataFrame(
        [
            {"from": "base / imported" if r["round"] is None else f"round {r['round']}", "accepted share": r["share"]}
            for r in rows
        ]
    )
    st.bar_chart(frame.set_index("from"), y_label="accepted / rated")
    st.caption(
        " · ".join(
            f"{'base' if r['round'] is None else 'round ' + str(r['round'])}: {r['accepted']}/{r['rated']}"
            for r in rows
        )
    )


def page() -> None:
    _, store = project()
    home = reload_home()
    st.header("Dreambooth rounds")
    if is_demo_model(home.config.base_model):
        st.info("Demo model: a tiny Stable Diffusion with random weights, built on this machine. It trains and "
                "generates in seconds, and its images are noise.", icon=":material/science:")  # fmt: skip
    missing = training_available()
    if missing:
        st.error(f"Training needs the training extras: {missing}.")
    with action(store) as session:
        unusable = model_status(session, home, "base")
    if unusable:
        st.error(f"A round cannot start from the base model: {unusable}.")
    start_form(home, store)
    st.subheader("Training jobs")
    jobs_panel(home, store, "train")
    with action(store) as session:
        mark_interrupted_rounds(session, home.config.jobs.stale_after_seconds)
        rows, tree = list_rounds(session), lineage(session)
    if rows:
        st.subheader("Rounds")
        st.code("\n".join(tree), language=None)
        for row in rows:
            if row["status"] == "interrupted":
                left, right = st.columns([4, 1], vertical_alignment="center")
                left.warning(f"Round {row['id']} was interrupted at step {row['step']} of {row['steps']}.")
                if right.button("Resume", key=f"resume-{row['id']}", type="primary", width="stretch"):
                    with action(store) as session:
                        job = submit(
                            session,
                            home,
                            "train",
                            {"round_id": resumable(session, row["id"], home.config.jobs.stale_after_seconds).id},
                        )
                    st.success(f"Round {row['id']} queued to resume as job {job.id}.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    loss_chart(store)
    comparison(home, store)
    acceptance(store)
