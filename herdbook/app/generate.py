"""Generate: new candidates from the base model or any finished round, as a background job."""

from __future__ import annotations

import streamlit as st

from herdbook.app.context import action, model_status, project
from herdbook.app.jobs_panel import jobs_panel
from herdbook.demo import is_demo_model
from herdbook.jobs import submit
from herdbook.training.rounds import model_choices, training_available


def page() -> None:
    home, store = project()
    st.header("Generate candidates")
    if is_demo_model(home.config.base_model):
        st.info("Demo model: a tiny Stable Diffusion with random weights, built on this machine. It trains and "
                "generates in seconds, and its images are noise.", icon=":material/science:")  # fmt: skip
    missing = training_available()
    if missing:
        st.error(f"Generation needs the training extras on the worker's machine: {missing}.")
    with action(store) as session:
        models = model_choices(session)
        unusable = model_status(session, home, "base")
    if unusable:
        st.error(f"Generation cannot start: {unusable}.")
    with st.form("generate"):
        prompt = st.text_input("Prompt", value=home.config.instance_prompt)
        negative = st.text_input("Negative prompt", value="")
        left, middle, right = st.columns(3)
        count = left.number_input("Images", min_value=1, max_value=200, value=4)
        seed = middle.number_input("First seed", min_value=0, value=0, help="Image i uses seed + i.")
        steps = right.number_input("Steps", min_value=1, max_value=200, value=30)
        model = st.selectbox(
            "Model", models, index=len(models) - 1, format_func=lambda m: "base model" if m == "base" else f"round {m}"
        )
        submitted = st.form_submit_button("Generate", type="primary", disabled=bool(missing or unusable))
    if submitted:
        if not prompt.strip():
            st.error("Write a prompt first.")
        else:
            with action(store) as session:
                job = submit(session, home, "generate", {"prompt": prompt.strip(), "negative_prompt": negative, "count": int(count),
                                                          "seed": int(seed), "steps": int(steps), "round": model})  # fmt: skip
            st.success(f"Queued job {job.id}. New images join the rating queue when it finishes.")
    st.subheader("Generation jobs")
    jobs_panel(home, store, "generate")
