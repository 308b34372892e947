"""Generate: new candidates from the base model or any finished round, as a background job."""

from __future__ import annotations

import streamlit as st

from herdbook import actions
from herdbook.app.context import action, project, reload_home, round_label, who
from herdbook.app.jobs_panel import jobs_panel
from herdbook.app.model import base_model_notice
from herdbook.training.rounds import model_choices, training_available


def page() -> None:
    _, store = project()
    home = reload_home()
    st.header("Generate candidates")
    actor = who(store)
    missing = training_available()
    if missing:
        st.error(f"Generation needs the training extras on the worker's machine: {missing}.")
    with action(store) as session:
        models = model_choices(session)
    unusable = base_model_notice(home, store, "Generation", actor)
    if not actor.is_admin:
        st.info("Generating candidates is for admins; the jobs they started are below.")
        st.subheader("Generation jobs")
        jobs_panel(home, store, "generate")
        return
    # two rows, so that at 1024x700 the job's images start in view below the button
    with st.form("generate"):
        wide, narrow = st.columns([3, 2])
        prompt = wide.text_input("Prompt", value=home.config.instance_prompt, key="prompt")
        negative = narrow.text_input("Negative prompt", value="")
        left, middle, right, last = st.columns([1, 1, 1, 2])
        count = left.number_input("Images", min_value=1, max_value=200, value=4)
        seed = middle.number_input("First seed", min_value=0, value=0, help="Image i uses seed + i.")
        steps = right.number_input("Steps", min_value=1, max_value=200, value=30)
        model = last.selectbox(
            "Model",
            models,
            index=len(models) - 1,
            format_func=lambda m: "base model" if m == "base" else round_label(m),
        )
        submitted = st.form_submit_button(
            "Generate", key="generate", type="primary", disabled=bool(missing or unusable)
        )
    if submitted:
        if not prompt.strip():
            st.error("Write a prompt first.")
        else:
            with action(store) as session:
                job = actions.queue_generation(session, actor, home, {"prompt": prompt.strip(), "negative_prompt": negative, "count": int(count),
                                                          "seed": int(seed), "steps": int(steps), "round": model})  # fmt: skip
            st.toast(f"Queued job {job.id}: its images join the rating queue when it finishes.")
    st.subheader("Generation jobs")
    jobs_panel(home, store, "generate")
