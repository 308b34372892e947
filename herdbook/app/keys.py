"""Rating keys that always reach rating, and the small styles the rating pages share.

Streamlit binds button shortcuts a moment after a page shows, so a key pressed as soon as the
image appeared was lost, and it ignores them while focus sits in an ``<input>`` (after a click on
a sidebar filter the next ``1`` typed "1" into the select box). The script below presses the
rating key's button itself, before Streamlit's listener: at once if the button is there, else as
soon as it appears; from a filter that is not being typed into (a closed select box, a checkbox,
a radio) too. Text fields keep their keys; a number field ("Cards per group") gives focus back
once Enter has committed its value.
"""

from __future__ import annotations

import json

import streamlit as st

# each rating key and the buttons (by their Streamlit key) it presses: one at a time, then the grid
KEY_BUTTONS = {
    "1": ["accept", "grid-accept"],
    "2": ["reject", "grid-reject"],
    "3": ["skip", "grid-skip"],
    "u": ["undo", "grid-undo"],
    "n": ["grid-new"],
    "ArrowLeft": ["grid-left"],
    "ArrowRight": ["grid-right"],
}

_SCRIPT = """
<script>
(() => {
  if (window.__herdbookKeys) return;
  window.__herdbookKeys = true;
  const buttons = %s;
  const button = (key) => {
    for (const name of buttons[key]) {
      const found = document.querySelector(`.st-key-${name} button`);
      if (found) return found;
    }
    return null;
  };
  const ratingPage = () => document.querySelector(".st-key-accept button, .st-key-grid-accept button");
  const holdsKey = (el) => {  // a filter that is not being typed into: the key is a rating key
    if (!el || !el.tagName) return false;
    if (el.tagName === "INPUT" && (el.type === "checkbox" || el.type === "radio")) return true;
    return el.getAttribute("role") === "combobox" && el.getAttribute("aria-expanded") !== "true";
  };
  const typing = (el) => el && !holdsKey(el) && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.isContentEditable);
  // A click while the app reruns can land on a button the rerun is replacing, and was lost
  // (one grid key in a loaded CI run): wait until the run is over and the button is its own.
  const busy = (target) => document.querySelector('[data-testid^="stStatusWidgetRunning"]') ||
    (target && target.closest('[data-stale="true"]'));
  // pressed before the page's buttons exist (it is still loading): pressed once they do. The key
  // waits while the app runs (up to a minute), then 5 s for its button, and is dropped after that.
  const press = (key, idleSince, pressedAt) => {
    const target = button(key);
    const now = Date.now();
    if (busy(target) && now - pressedAt < 60000) {
      setTimeout(() => press(key, Date.now(), pressedAt), 50);
    } else if (target && !target.disabled) {
      target.click();
    } else if (now - idleSince < 5000) {  // not there yet, or disabled for a moment
      setTimeout(() => press(key, idleSince, pressedAt), 50);
    }
  };
  // Streamlit binds its button shortcuts a moment after the page shows (keys pressed sooner were
  // lost, 3 of 4 right after the image appeared) and not while a filter holds focus. This
  // listener (capture phase, before Streamlit's) presses the key's button itself.
  document.addEventListener("keydown", (event) => {
    const el = event.target;
    if (!(event.key in buttons) || event.ctrlKey || event.metaKey || event.altKey || typing(el)) return;
    if (!button(event.key) && ratingPage()) return;  // a key this layout does not use
    event.preventDefault();
    event.stopImmediatePropagation();
    if (holdsKey(el)) el.blur();
    press(event.key, Date.now(), Date.now());
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
    st.html(_SCRIPT % json.dumps(KEY_BUTTONS), unsafe_allow_javascript=True)
    st.html(_STYLE)
