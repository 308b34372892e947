"""The app's navigation. `herdbook serve` runs this file; ``streamlit_app.py`` at the
repository root calls ``main`` for `streamlit run streamlit_app.py`."""

import streamlit as st


def main() -> None:
    st.set_page_config(page_title="herdbook", page_icon="🐂", layout="wide")
    # The server's first run imports the pages (pandas, altair, the database layers: ~1 s, more on
    # a busy machine): say so at once rather than show a blank page.
    loading = st.empty()
    if "herdbook-shown" not in st.session_state:
        loading.caption("Loading herdbook…")
    from herdbook.app import dataset, generate, rate, rounds

    navigation = st.navigation(
        [
            rate.as_page(),
            st.Page(generate.page, title="Generate", icon=":material/auto_awesome:", url_path="generate"),
            st.Page(dataset.page, title="Dataset", icon=":material/dataset:", url_path="dataset"),
            st.Page(rounds.page, title="Rounds", icon=":material/model_training:", url_path="rounds"),
        ]
    )
    loading.empty()  # before the page runs: a page that stops early (sign-in) sends nothing after
    st.session_state["herdbook-shown"] = True
    navigation.run()


if __name__ == "__main__":  # Streamlit runs a script as __main__ on every rerun
    main()
