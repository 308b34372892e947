"""The base model, as Generate and Rounds show it: what it is, whether it loads, and a way to change it."""

from __future__ import annotations

import streamlit as st

from herdbook import actions
from herdbook.app.context import action, family_label, model_status
from herdbook.db.access import Actor
from herdbook.demo import is_demo_model
from herdbook.errors import HerdbookError


def base_model_notice(home, store, what: str, actor: Actor) -> str | None:
    """Say what the base model is and why it cannot load (if so); returns that reason."""
    if is_demo_model(home.config.base_model):
        st.info("Demo model: a tiny Stable Diffusion with random weights, built on this machine. It trains and "
                "generates in seconds, and its images are noise.", icon=":material/science:")  # fmt: skip
    with action(store) as session:
        unusable = model_status(session, home, "base")
    kind = None if unusable else family_label(home.config.base_model, home.config.resolution)
    if unusable:
        st.error(f"{what} cannot start from the base model: {unusable}."
                 + (" Set the base model below." if actor.is_admin else " An admin can set another."))  # fmt: skip
    if not actor.is_admin:
        return unusable
    with (
        st.expander(f"Base model: {home.config.base_model}" + (f" ({kind})" if kind else ""), expanded=bool(unusable)),
        st.form(f"base-model-{what}", border=False),
    ):
        value = st.text_input(
            "Hub id or folder",
            key=f"base-model-{what}",
            value=home.config.base_model,
            help="Saved in herdbook.toml as base_model. A hub id needs the hub, or the model in "
            "the local Hugging Face cache; a folder needs a diffusers pipeline (model_index.json) of "
            "Stable Diffusion 1.x or SDXL, which herdbook tells apart by itself.",
        )
        if st.form_submit_button("Save base model", key=f"save-base-model-{what}"):
            try:
                with action(store) as session:
                    actions.change_base_model(session, actor, home, value)
            except HerdbookError as error:
                st.error(str(error))
            else:
                st.toast(f"Base model set to {value.strip()}")
                st.rerun()
    return unusable
