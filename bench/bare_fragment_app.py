"""Baseline for bench/rate_latency.py: a bare fragment with one image and two shortcut buttons.

Whatever this costs is Streamlit's own floor; the Rate page should add almost nothing to it.
Run by the benchmark with BENCH_IMAGES=folder.
"""

import os
from pathlib import Path

import streamlit as st

IMAGES = sorted(Path(os.environ["BENCH_IMAGES"]).glob("*.jpg"))


def advance() -> None:
    st.session_state.index = st.session_state.get("index", 0) + 1


@st.fragment
def panel() -> None:
    index = st.session_state.get("index", 0)
    st.button("Accept", shortcut="1", on_click=advance)
    st.button("Reject", shortcut="2", on_click=advance)
    st.image(str(IMAGES[index % len(IMAGES)]), width=512)
    st.caption(f"#{index + 1} · ")


panel()
