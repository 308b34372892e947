"""Rating keys that always reach rating, and the small styles the rating pages share.

Streamlit ignores a shortcut while focus sits in an ``<input>``. After a click on a sidebar
filter (a select box, a checkbox, a radio) focus stays there, so the next ``1`` typed "1" into
the select box and cast no vote. The script below takes back the rating keys from a
filter that is not being typed into (a closed select box, a checkbox, a radio), blurs it, and
hands the key on to the page. Text fields keep their keys; a number field ("Cards per group")
gives focus back once Enter has committed its value.
"""

from __future__ import annotations

import streamlit as st

RATING_KEYS = ("1", "2", "3", "u", "n", "ArrowLeft", "ArrowRight")

_SCRIPT = """
<script>
(() => {
  if (window.__herdbookKeys) return;
  window.__herdbookKeys = true;
  const keys = new Set(%s);
  const holdsKey = (el) => {
    if (!el || !el.tagName) return false;
    if (el.tagName === "INPUT" && (el.type === "checkbox" || el.type === "radio")) return true;
    return el.getAttribute("role") === "combobox" && el.getAttribute("aria-expanded") !== "true";
  };
  document.addEventListener("keydown", (event) => {
    const el = event.target;
    if (!keys.has(event.key) || event.ctrlKey || event.metaKey || event.altKey || !holdsKey(el)) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    el.blur();
    document.body.dispatchEvent(new KeyboardEvent("keydown", {key: event.key, code: event.code, bubbles: true}));
  }, true);
  // a number typed into a number field is done with Enter: hand focus back, or the next "1" typed "81"
  document.addEventListener("keydown", (event) => {
    const el = event.target;
    if (event.key === "Enter" && el && el.tagName === "INPUT" && el.type === "number") setTimeout(() => el.blur(), 0);
  }, true);
})();
</script>
"""

_STYLE = """
<style>
/* The rating pages need the height: the image, its buttons and its caption fit 1024x700. */
.block-container { padding-top: 2.5rem; }
/* Capped by the window's height, the image keeps its shape inside its 512 px box (it was squeezed) */
.st-key-rate-image img { max-height: calc(100vh - 19.5rem); object-fit: contain; object-position: left top; }
.st-key-grid-cursor { outline: 3px solid var(--primary-color, #1f7a4d); outline-offset: 2px; border-radius: 0.5rem; }
[class*="st-key-grid-voted-"] img { opacity: 0.55; }
/* accepted and rejected cards must not look alike: a green or a red frame beside the faded image */
[class*="st-key-grid-voted-accept-"] img { outline: 4px solid #1f7a4d; outline-offset: -4px; }
[class*="st-key-grid-voted-reject-"] img { outline: 4px solid #b3261e; outline-offset: -4px; }
</style>
"""


def keep_rating_keys() -> None:
    """Install the key hand-off once per browser tab (the script guards itself)."""
    st.html(_SCRIPT % list(RATING_KEYS).__repr__().replace("'", '"'), unsafe_allow_javascript=True)
    st.html(_STYLE)
