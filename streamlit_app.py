"""herdbook's app: `herdbook serve`, or `HERDBOOK_HOME=DIR streamlit run streamlit_app.py`."""

from herdbook.app.main import main

main()
