"""herdbook's app: `herdbook serve`, or `HERDBOOK_HOME=DIR streamlit run streamlit_app.py`."""

import streamlit as st

from herdbook.app import dataset, generate, rate, rounds

st.set_page_config(page_title="herdbook", page_icon="🐂", layout="wide")
navigation = st.navigation(
    [
        st.Page(rate.page, title="Rate", icon=":material/thumbs_up_down:", url_path="rate", default=True),
        st.Page(generate.page, title="Generate", icon=":material/auto_awesome:", url_path="generate"),
        st.Page(dataset.page, title="Dataset", icon=":material/dataset:", url_path="dataset"),
        st.Page(rounds.page, title="Rounds", icon=":material/model_training:", url_path="rounds"),
    ]
)
navigation.run()
