"""Rate: the page people spend their day on. Keyboard first: 1 accept, 2 reject, 3 skip, u undo.

Speed comes from never recomputing the page per vote: the queue (ids and cards of the next
50 candidates) and the counts live in the session; a vote is one small transaction inside a
fragment, which alone reruns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from herdbook.app.context import action, ask_rater, project, round_label
from herdbook.db.errors import StoreBusy
from herdbook.feedback.catalog import Card, cards, filter_choices
from herdbook.feedback.votes import (
    QueueFilter,
    cast_vote,
    next_entries,
    prompt_group,
    queue_view,
    rater_vote_count,
    undo_last_vote,
)

ORDERS = {
    "uncertainty": "Where a vote counts most",
    "oldest": "Oldest first",
    "newest-round": "Newest round first",
}

BATCH = 50


@dataclass
class Queue:
    rater: str
    filters: QueueFilter
    cards: list[Card] = field(default_factory=list)
    left: int = 0
    votes: int = 0
    last_message: str = ""
    reasons: dict[int, str] = field(default_factory=dict)  # why each image is shown
    unsaved: list[tuple[int, str]] = field(default_factory=list)  # votes the database was too busy to take
    selection: object = None  # the project's SelectionPolicy, which the default order firms up


def load_queue(store, rater: str, filters: QueueFilter, selection) -> Queue:
    with action(store) as session:
        entries, size = queue_view(session, rater, filters, limit=BATCH, selection=selection)
        return Queue(
            rater,
            filters,
            cards(session, [e.id for e in entries]),
            size,
            rater_vote_count(session, rater),
            reasons={e.id: e.reason for e in entries},
            selection=selection,
        )


def refill(store, queue: Queue) -> None:
    if len(queue.cards) < 5:
        with action(store) as session:
            have = {c.id for c in queue.cards}
            entries = next_entries(session, queue.rater, queue.filters, BATCH + len(have), queue.selection)
            more = [e for e in entries if e.id not in have][: BATCH - len(queue.cards)]
            queue.reasons.update({e.id: e.reason for e in more})
            queue.cards += cards(session, [e.id for e in more])


def save_unsaved(store, queue: Queue) -> bool:
    """Store the votes this page holds, oldest first; False while the database stays busy (they
    are kept, shown, and tried again with the next key)."""
    while queue.unsaved:
        candidate_id, value = queue.unsaved[0]
        try:
            store.write(lambda session, cid=candidate_id, v=value: cast_vote(session, cid, queue.rater, v))
        except StoreBusy:
            return False
        queue.unsaved.pop(0)
    return True


def vote(store, queue: Queue, candidate_id: int, value: str) -> None:
    queue.unsaved.append((candidate_id, value))  # kept here until the database has it
    saved = save_unsaved(store, queue)
    queue.cards = [c for c in queue.cards if c.id != candidate_id]
    queue.left = max(0, queue.left - 1) if queue.filters.unrated_only else queue.left
    queue.votes += value != "skip"
    queue.last_message = (
        f"{value} #{candidate_id}"
        if saved
        else f"{len(queue.unsaved)} vote(s) not stored yet: the database is busy. They are kept and sent with your next key"
    )
    refill(store, queue)


def undo(store, queue: Queue) -> None:
    if queue.unsaved:  # the newest vote never reached the database: take it back here
        candidate_id, value = queue.unsaved.pop()
        with action(store) as session:
            queue.cards = [*cards(session, [candidate_id]), *[c for c in queue.cards if c.id != candidate_id]]
        queue.votes -= value != "skip"
        queue.left += queue.filters.unrated_only
        queue.last_message = f"undid your vote on #{candidate_id}"
        return
    with action(store) as session:
        undone = undo_last_vote(session, queue.rater)
        card = cards(session, [undone])[0] if undone is not None else None
        queue.votes = rater_vote_count(session, queue.rater)
    if card is None:
        queue.last_message = "nothing to undo"
        return
    queue.cards = [card, *[c for c in queue.cards if c.id != card.id]]
    queue.left += queue.filters.unrated_only
    queue.last_message = f"undid your vote on #{card.id}"


def sidebar_filters(store) -> QueueFilter:
    with action(store) as session:
        prompts, rounds = filter_choices(session)
    with st.sidebar:
        st.subheader("Filters")
        prompt = st.selectbox("Prompt", ["(any)", *prompts], key="filter_prompt")
        round_choice = st.selectbox(
            "From", ["(any)", *rounds], format_func=lambda r: r if r == "(any)" else round_label(r), key="filter_round"
        )
        unrated = st.checkbox("Only what I have not rated", value=True, key="filter_unrated")
        order = st.selectbox("Order", list(ORDERS), format_func=ORDERS.get, key="filter_order")
    round_id = None if round_choice == "(any)" else (0 if round_choice is None else round_choice)
    return QueueFilter(None if prompt == "(any)" else prompt, round_id, unrated, order)


@st.fragment
def one_at_a_time(home, store, rater: str, filters: QueueFilter) -> None:
    # Every element here is sent again on each key press, one websocket message each, and the
    # browser starts loading the image only when its message arrives. So: few elements, and the
    # image's message early; the buttons go into the row above it afterwards (bench/rate_latency.py).
    queue: Queue | None = st.session_state.get("queue")
    if queue is None or queue.rater != rater or queue.filters != filters:
        queue = st.session_state["queue"] = load_queue(store, rater, filters, home.config.selection)
    current = queue.cards[0] if queue.cards else None
    controls = st.container(horizontal=True, width=512)
    if current is None:
        st.success("Nothing left to rate here. Generate more, or change the filters.")
    else:
        st.image(str(home.root / current.path), width=512)
        st.text(current.prompt or "(no prompt)")
    last = f" · last: {queue.last_message}" if queue.last_message else ""
    votes = f"{queue.votes} vote{'' if queue.votes == 1 else 's'}"
    why = queue.reasons.get(current.id) if current else None
    where = f"#{current.id} · {current.source_name} · {round_label(current.round)} · " if current else ""
    where += f"{why} · " if why and queue.filters.order == "uncertainty" else ""
    st.caption(f"{where}{queue.left} left in this queue · {votes} by {rater}{last}")
    cid = current.id if current else 0
    with controls:
        for label, key, value in [("Accept", "1", "accept"), ("Reject", "2", "reject"), ("Skip", "3", "skip")]:
            st.button(
                label,
                key=value,
                shortcut=key,
                type="primary" if value == "accept" else "secondary",
                disabled=current is None,
                on_click=vote,
                args=(store, queue, cid, value),
                width="stretch",
            )
        st.button("Undo", key="undo", shortcut="u", on_click=undo, args=(store, queue), width="stretch")


@st.fragment
def grid(home, store, rater: str, filters: QueueFilter) -> None:
    """Oxen's feedback-example layout: the candidates of one prompt side by side."""
    with action(store) as session:
        group = cards(session, prompt_group(session, rater, filters, selection=home.config.selection))
    if not group:
        st.success("Nothing left to rate here.")
        return
    st.text(group[0].prompt or "(no prompt)")
    for column, card in zip(st.columns(4), group, strict=False):
        with column:
            st.image(str(home.root / card.path), width="stretch")
            st.caption(f"#{card.id} · {round_label(card.round)}")
            left, right = st.columns(2)
            if left.button("Accept", key=f"grid-accept-{card.id}", icon=":material/thumb_up:", width="stretch"):
                with action(store) as session:
                    cast_vote(session, card.id, rater, "accept")
                st.rerun(scope="fragment")
            if right.button("Reject", key=f"grid-reject-{card.id}", icon=":material/thumb_down:", width="stretch"):
                with action(store) as session:
                    cast_vote(session, card.id, rater, "reject")
                st.rerun(scope="fragment")


def page() -> None:
    home, store = project()
    rater = ask_rater()
    if rater is None:
        return
    filters = sidebar_filters(store)
    with st.sidebar:
        st.caption(f"Rating as **{rater}** · keys: 1 accept, 2 reject, 3 skip, u undo")
        mode = st.radio("Layout", ["One at a time", "Grid of four"], key="layout", horizontal=True)
    if mode == "One at a time":
        one_at_a_time(home, store, rater, filters)
    else:
        grid(home, store, rater, filters)
