"""The Streamlit app's pages. They call db/, feedback/ and training/ services only."""
