"""What every page needs: the project, the rater, one transaction per action, error display."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

from herdbook.db.access import Actor, sign_in, sign_in_required, still_signed_in
from herdbook.errors import HerdbookError
from herdbook.feedback.votes import new_rater_name
from herdbook.home import Home, load_home, resolve_home


@st.cache_resource(show_spinner=False)
def _open(home_root: str):
    home = load_home(home_root)
    return home, home.open_store()


def project():
    """The home and store, opened once per server process; stops the page with advice if missing."""
    root = str(resolve_home())
    try:
        return _open(root)
    except HerdbookError as error:
        st.error(f"{error}")
        st.stop()


def reload_home() -> Home:
    """The config as it is on disk now (the CLI may have changed it)."""
    home, _ = project()
    return load_home(home.root)


@contextlib.contextmanager
def stopping_on_error() -> Iterator[None]:
    """In a page's body: an expected failure becomes one st.error line and ends the run."""
    try:
        yield
    except HerdbookError as error:
        st.error(str(error))
        st.stop()


@contextlib.contextmanager
def action(store) -> Iterator:
    """One transaction for one user action, in a page's body; an expected failure becomes one
    st.error line and ends the run. (In an on_click callback use a plain transaction inside a
    `reporting` callback: a callback runs before the page, and stopping there blanks it.)"""
    with stopping_on_error(), store.transaction() as session:
        yield session


def reporting(callback):
    """An on_click callback whose expected failure is kept for `show_reported`."""

    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            callback(*args, **kwargs)
        except HerdbookError as error:
            report(error)

    return run


def report(error: HerdbookError) -> None:
    """For on_click callbacks: they run before the page, where st.stop would leave the page
    blank but for the error. The error is kept and `show_reported` shows it in the page."""
    st.session_state.setdefault("reported", []).append(str(error))


def show_reported() -> None:
    for message in st.session_state.pop("reported", []):
        st.error(message)


def current_rater() -> str | None:
    """The open app's rater: ``?rater=NAME`` in the URL, else what they typed, kept for the session."""
    from_url = st.query_params.get("rater")
    if from_url:
        with contextlib.suppress(HerdbookError):
            st.session_state["rater"] = new_rater_name(from_url)
    return st.session_state.get("rater")


def ask_rater() -> str | None:
    name = current_rater()
    if name:
        return name
    st.subheader("Who is rating?")
    typed = st.text_input("Your name", key="rater_input", placeholder="e.g. ann")
    if typed:
        try:
            name = new_rater_name(typed)
        except HerdbookError as error:
            st.error(str(error))
            return None
        st.session_state["rater"] = name
        st.query_params["rater"] = name  # the URL now links straight to this rater
        st.rerun()
    st.caption("Tip: send each rater a link ending in ?rater=THEIR_NAME.")
    return None


OPEN_NOTICE = (
    "No sign-in: anyone who reaches this app may rate and run things, so `herdbook serve` keeps it on "
    "this machine (127.0.0.1). `herdbook users add NAME --role admin` turns sign-in on."
)


def who(store, need_name: bool = False) -> Actor:
    """The person using the page. With users configured they must sign in (the page stops at
    the form until they have) and act as themselves; ``?rater=`` names nobody then. Without
    users the app is open: everyone acts as an admin, named by ``?rater=`` or what they type."""
    with action(store) as session:
        required = sign_in_required(session)
        remembered = st.session_state.get("actor")
        if required and isinstance(remembered, Actor) and remembered.signed_in:
            st.session_state["actor"] = still_signed_in(session, remembered)
    if not required:
        name = ask_rater() if need_name else current_rater()
        if need_name and name is None:
            st.stop()
        st.sidebar.caption(OPEN_NOTICE)
        return Actor(name or "app (no sign-in)", "admin")
    actor = st.session_state.get("actor")
    if isinstance(actor, Actor) and actor.signed_in:
        with st.sidebar:
            st.caption(f"Signed in as **{actor.name}** ({actor.role})")
            st.button("Sign out", key="sign-out", on_click=st.session_state.pop, args=("actor", None))
        return actor
    sign_in_form(store)
    st.stop()


def sign_in_form(store) -> None:
    st.subheader("Sign in")
    with st.form("sign-in"):
        name = st.text_input("Name", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        address = st.context.ip_address  # as the app's server saw it; on loopback every browser shares one
        client = address if isinstance(address, str) and address else "unknown"
        with action(store) as session:  # a sign-in held back by earlier failures says so and stops here
            actor = sign_in(session, name, password, client=client)
        if actor is None:
            st.error("That name and password do not match a user.")
            return
        st.session_state["actor"] = actor
        st.query_params.pop("rater", None)  # signed in, ?rater= names nobody: the URL stops saying it does
        st.rerun()


def round_label(round_id: int | None) -> str:
    return "imported / base" if round_id is None else f"round {round_id}"


@st.cache_data(ttl=30, show_spinner=False)
def _chain_status(pipeline: str, adapters: tuple[str, ...]) -> str | None:
    from herdbook.training.rounds import chain_problem
    from herdbook.training.settings import ModelChain

    return chain_problem(ModelChain(pipeline, adapters))


@st.cache_data(ttl=30, show_spinner=False)
def family_label(pipeline: str, resolution: int | None = None) -> str | None:
    """What kind of model ``pipeline`` is, and the size the project draws at."""
    from herdbook.training.rounds import family_label

    return family_label(pipeline, resolution)


def model_status(session, home, ref) -> str | None:
    """Why the model of ``ref`` cannot be loaded, checked at most every 30 s (it may probe the hub)."""
    from herdbook.training.rounds import model_for

    chain, _ = model_for(session, home.project, ref)
    return _chain_status(chain.pipeline, chain.adapters)


def local_time(moment: datetime | str | None, short: bool = False) -> str:
    """A time as the person reading it keeps time: their browser's time zone, minutes.
    ``short`` leaves out the year, for table columns that must fit at 1024 px."""
    if not moment:
        return ""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    try:
        zone = ZoneInfo(st.context.timezone) if st.context.timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        zone = None  # the server's own zone
    return (
        moment.replace(tzinfo=moment.tzinfo or UTC)
        .astimezone(zone)
        .strftime("%d %b %H:%M" if short else "%d %b %Y, %H:%M")
    )


def shown(value, digits: int = 2) -> str:
    """A table cell: blank for nothing, floats rounded."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
