"""Rate: the page people spend their day on. Keyboard first: 1 accept, 2 reject, 3 skip, u undo.

Speed comes from never recomputing the page per vote: the queue (ids and cards of the next
50 candidates) and the counts live in the session; a vote is one small transaction inside a
fragment, which alone reruns.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import streamlit as st

from herdbook import actions
from herdbook.app.context import action, project, reporting, round_label, show_reported, stopping_on_error, who
from herdbook.app.keys import keep_rating_keys
from herdbook.db.access import Actor
from herdbook.db.errors import StoreBusy
from herdbook.feedback.catalog import Card, cards, filter_choices
from herdbook.feedback.votes import (
    QueueFilter,
    current_vote,
    my_votes,
    next_entries,
    nothing_left_text,
    prompt_group,
    queue_view,
    rater_vote_count,
)

ORDERS = {
    "uncertainty": "Where a vote counts most",
    "oldest": "Oldest first",
    "newest-round": "Newest round first",
    "most-alike": "Most like the instance set (DINO)",
}

BATCH = 50
# Others' votes move the uncertainty queue: a page that kept its 50 cards until 5 were left handed
# its rater images settled minutes ago, and the same ones another rater's page held. So the cards
# after the one on screen are read again as often as a read costs each vote READ_SECONDS_PER_VOTE
# on average: after every vote on a small project (a read takes 4 ms at 72 images), every 4th at
# 1,200 (18 ms), every 16th at 5,000 (80 ms), and at most every MOST_VOTES_BETWEEN_READS: at one
# press in 25, a 50,000-image project's 1 s read never reaches the 95th-percentile press.
READ_SECONDS_PER_VOTE, MOST_VOTES_BETWEEN_READS = 0.005, 25


def votes_between_reads(read_seconds: float) -> int:
    return min(MOST_VOTES_BETWEEN_READS, max(1, math.ceil(read_seconds / READ_SECONDS_PER_VOTE)))


@dataclass
class Queue:
    actor: Actor
    filters: QueueFilter
    cards: list[Card] = field(default_factory=list)
    left: int = 0
    votes: int = 0
    last_message: str = ""
    reasons: dict[int, str] = field(default_factory=dict)  # why each image is shown
    earlier: dict[int, str] = field(default_factory=dict)  # this rater's vote on a shown image, if any
    unsaved: list[tuple[int, str]] = field(default_factory=list)  # votes the database was too busy to take
    selection: object = None  # the project's SelectionPolicy, which the default order firms up
    since_read: int = 0  # votes on this page since its cards were read from the queue
    read_seconds: float = 0.0  # how long that read took

    @property
    def stale(self) -> bool:
        if self.filters.order != "uncertainty":  # the other orders don't move with others' votes
            return False
        return self.since_read >= votes_between_reads(self.read_seconds)

    @property
    def rater(self) -> str:
        return self.actor.name


def load_queue(store, actor: Actor, filters: QueueFilter, selection) -> Queue:
    with store.transaction() as session:
        queue = Queue(actor, filters, votes=rater_vote_count(session, actor.name), selection=selection)
        read_cards(session, queue)
        return queue


def read_cards(session, queue: Queue) -> None:
    """Fill the page with the next BATCH cards of its queue (but those voted here and not stored
    yet), and time the read."""
    started = time.perf_counter()
    entries, queue.left = queue_view(session, queue.rater, queue.filters, limit=BATCH, selection=queue.selection)
    waiting = {candidate_id for candidate_id, _ in queue.unsaved}
    queue.cards = []
    add_cards(session, queue, [e for e in entries if e.id not in waiting])
    queue.since_read, queue.read_seconds = 0, time.perf_counter() - started


def add_cards(session, queue: Queue, entries) -> None:
    """The queue entries' cards after the page's, with why each is there and this rater's earlier vote."""
    ids = [e.id for e in entries]
    queue.reasons.update({e.id: e.reason for e in entries})
    queue.cards += cards(session, ids)
    if not queue.filters.unrated_only:
        queue.earlier.update(my_votes(session, queue.rater, ids))


def refill(store, queue: Queue) -> None:
    if queue.stale:
        with store.transaction() as session:
            read_cards(session, queue)
        return
    if len(queue.cards) < 5:
        with store.transaction() as session:
            have = {c.id for c in queue.cards}
            entries = next_entries(session, queue.rater, queue.filters, BATCH + len(have), queue.selection)
            add_cards(session, queue, [e for e in entries if e.id not in have][: BATCH - len(queue.cards)])


def save_unsaved(store, queue: Queue) -> bool:
    """Store the votes this page holds, oldest first; False while the database stays busy (they
    are kept, shown, and tried again with the next key)."""
    while queue.unsaved:
        candidate_id, value = queue.unsaved[0]
        try:
            store.write(lambda session, cid=candidate_id, v=value: actions.vote(session, queue.actor, cid, v))
        except StoreBusy:
            return False
        queue.unsaved.pop(0)
    return True


def vote(store, queue: Queue, candidate_id: int, value: str) -> None:
    queue.unsaved.append((candidate_id, value))  # kept here until the database has it
    saved = save_unsaved(store, queue)
    queue.cards = [c for c in queue.cards if c.id != candidate_id]
    queue.left = max(0, queue.left - 1) if queue.filters.unrated_only else queue.left
    # one current vote per image: a new vote replaces this rater's earlier one
    queue.votes += is_decisive(value) - is_decisive(queue.earlier.get(candidate_id))
    queue.earlier[candidate_id] = value
    queue.since_read += 1
    queue.last_message = (
        f"{value} #{candidate_id}"
        if saved
        else f"{len(queue.unsaved)} vote(s) not stored yet: the database is busy. They are kept and sent with your next key"
    )
    refill(store, queue)


def undo(store, queue: Queue) -> None:
    if queue.unsaved:  # the newest vote never reached the database: take it back here
        candidate_id, value = queue.unsaved.pop()
        with store.transaction() as session:
            queue.cards = [*cards(session, [candidate_id]), *[c for c in queue.cards if c.id != candidate_id]]
            remember(queue, candidate_id, current_vote(session, candidate_id, queue.rater))
        queue.votes -= value != "skip"
        queue.left += queue.filters.unrated_only
        queue.last_message = f"undid your vote on #{candidate_id}"
        return
    with store.transaction() as session:
        undone = actions.undo(session, queue.actor)
        card = cards(session, [undone])[0] if undone is not None else None
        queue.votes = rater_vote_count(session, queue.rater)
        if undone is not None:  # the vote before the undone one, if any, counts again
            remember(queue, undone, current_vote(session, undone, queue.rater))
    if card is None:
        queue.last_message = "nothing to undo"
        return
    queue.cards = [card, *[c for c in queue.cards if c.id != card.id]]
    queue.left += queue.filters.unrated_only
    queue.last_message = f"undid your vote on #{card.id}"


def remember(queue: Queue, candidate_id: int, vote) -> None:
    """Keep this rater's current vote on a shown image (or that it has none)."""
    if vote is None:
        queue.earlier.pop(candidate_id, None)
    else:
        queue.earlier[candidate_id] = str(getattr(vote, "value", vote))


def leading_alike(a: list[str], b: list[str]) -> int:
    """How many words two prompts begin with alike."""
    return next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def distinct_ends(prompts: list[str]) -> dict[str, str]:
    """Each prompt without the words it begins with alike with another prompt, but the last two
    ("a fluffy white cartoon ox with curved horns ..." -> "…ox with curved horns ..."): a narrow
    sidebar cut long prompts off where they were all alike."""
    words = {p: p.split(" ") for p in prompts}
    labels = {}
    for prompt, own in words.items():
        shared = max((leading_alike(own, other) for p, other in words.items() if p != prompt), default=0)
        cut = max(0, min(shared, len(own) - 1) - 2)
        if len(" ".join(own[:cut])) >= 12:
            labels[prompt] = "…" + " ".join(own[cut:])
    return labels


def sidebar_filters(store) -> QueueFilter:
    with action(store) as session:
        prompts, rounds = filter_choices(session)
    with st.sidebar:
        st.subheader("Filters")
        labels = distinct_ends(prompts)
        prompt = st.selectbox(
            "Prompt", ["(any)", *prompts], key="filter_prompt", format_func=lambda p: labels.get(p, p)
        )
        round_choice = st.selectbox(
            "From", ["(any)", *rounds], format_func=lambda r: r if r == "(any)" else round_label(r), key="filter_round"
        )
        unrated = st.checkbox("Only what I have not rated", value=True, key="filter_unrated")
        order = st.selectbox("Order", list(ORDERS), format_func=ORDERS.get, key="filter_order")
    round_id = None if round_choice == "(any)" else (0 if round_choice is None else round_choice)
    return QueueFilter(None if prompt == "(any)" else prompt, round_id, unrated, order)


KEYED_VOTES = [("Accept", "1", "accept"), ("Reject", "2", "reject"), ("Skip", "3", "skip")]


@st.fragment
def one_at_a_time(home, store, actor: Actor, filters: QueueFilter) -> None:
    # Every element here is sent again on each key press, one websocket message each, and the
    # browser starts loading the image only when its message arrives. So: few elements, and the
    # image's message early; the buttons and caption go into the rows above it afterwards
    # (bench/rate_latency.py). The caption sits above the image so it stays in view at 1024x700.
    show_reported()
    queue: Queue | None = st.session_state.get("queue")
    if queue is None or queue.actor != actor or queue.filters != filters:
        with stopping_on_error():
            queue = st.session_state["queue"] = load_queue(store, actor, filters, home.config.selection)
    current = queue.cards[0] if queue.cards else None
    controls = st.container(horizontal=True, width=640)
    caption = st.empty()
    prompt_line = st.empty()  # above the image: in view at 1024x700 whatever the image's height
    if current is None:
        st.success(empty_queue_text(store, queue, home.config.selection))
    else:
        with st.container(key="rate-image"):
            st.image(str(home.root / current.path), width=512)
        prompt_line.text(current.prompt or "(no prompt)")
    why = queue.reasons.get(current.id) if current else None
    before = queue.earlier.get(current.id) if current else None
    where = f"#{current.id} · {current.source_name} · {round_label(current.round)} · " if current else ""
    if before:  # re-rating: what this rater said last time, not why the queue once chose the image
        where += f"you voted {before} before · "
    elif why and queue.filters.order in ("uncertainty", "most-alike"):  # why it is shown: uncertainty or DINO
        where += f"{why} · "
    last = f" · last: {queue.last_message}" if queue.last_message else ""
    caption.caption(f"{where}{queue.left} left in this queue · {vote_count(queue.votes)} by {actor.name}{last}")
    cid = current.id if current else 0
    with controls:
        for label, key, value in KEYED_VOTES:
            st.button(
                label,
                key=value,
                shortcut=key,
                type="primary" if value == "accept" else "secondary",
                disabled=current is None,
                on_click=reporting(vote),
                args=(store, queue, cid, value),
                width="stretch",
            )
        st.button("Undo", key="undo", shortcut="u", on_click=reporting(undo), args=(store, queue), width="stretch")


def empty_queue_text(store, queue: Queue, selection) -> str:
    if queue.filters != QueueFilter(order="uncertainty"):  # a filter narrowed it: the filter emptied it
        return "Nothing left to rate here. Generate more, or change the filters."
    with store.transaction() as session:
        return nothing_left_text(session, queue.rater, selection)


def is_decisive(value: str | None) -> bool:
    return value in ("accept", "reject")


def vote_count(votes: int) -> str:
    """Accepts and rejects; a skip says "no opinion" and is no vote, here as everywhere."""
    return f"{votes} vote{'' if votes == 1 else 's'}"


@dataclass
class Group:
    """The grid: one prompt's candidates side by side. Voted cards stay in place, marked, until
    every card has a vote; then the next group comes. Keys act on the highlighted card."""

    actor: Actor
    filters: QueueFilter
    size: int
    cards: list[Card] = field(default_factory=list)
    marks: dict[int, str] = field(default_factory=dict)  # card id -> the vote it got here
    cursor: int = 0
    votes: int = 0
    last_message: str = ""
    passed: frozenset[int] = frozenset()  # cards left for later with "New group": they come back last

    @property
    def rater(self) -> str:
        return self.actor.name

    def next_open(self, start: int) -> int:
        for step in range(len(self.cards)):
            index = (start + step) % len(self.cards)
            if self.cards[index].id not in self.marks:
                return index
        return start


def load_group(store, actor: Actor, filters: QueueFilter, size: int, selection, passed=frozenset()) -> Group:
    with store.transaction() as session:
        ids = prompt_group(session, actor.name, filters, size=size, selection=selection, passed=passed)
        group = Group(actor, filters, size, cards(session, ids), votes=rater_vote_count(session, actor.name))
    group.passed = passed if not set(ids) & passed else frozenset()  # all passed over: they are back, afresh
    return group


def grid_vote(store, group: Group, value: str, index: int | None = None, selection=None) -> None:
    index = group.cursor if index is None else index
    if not group.cards:
        return
    card = group.cards[index]
    try:
        store.write(lambda session: actions.vote(session, group.actor, card.id, value))
    except StoreBusy:
        group.last_message = f"#{card.id} not stored: the database is busy. Vote again in a moment"
        return
    group.votes += (value != "skip") - (group.marks.get(card.id, "skip") != "skip")
    group.marks[card.id] = value
    group.last_message = f"{value} #{card.id}"
    if len(group.marks) == len(group.cards):
        next_group(store, group, selection)
    else:
        group.cursor = group.next_open(index + 1)


def next_group(store, group: Group, selection) -> None:
    """The next group in the queue's order; the cards left without a vote come back later."""
    passed = group.passed | {c.id for c in group.cards if c.id not in group.marks}
    fresh = load_group(store, group.actor, group.filters, group.size, selection, frozenset(passed))
    group.cards, group.marks, group.cursor, group.passed = fresh.cards, {}, 0, fresh.passed


def grid_undo(store, group: Group) -> None:
    with store.transaction() as session:
        undone = actions.undo(session, group.actor)
        group.votes = rater_vote_count(session, group.rater)
        card = cards(session, [undone])[0] if undone is not None else None
        restored = current_vote(session, undone, group.rater) if undone is not None else None
    if card is None:
        group.last_message = "nothing to undo"
        return
    group.marks.pop(card.id, None)
    if restored is not None:  # voted twice here: the earlier vote counts again, and shows
        group.marks[card.id] = str(restored)
    if card.id not in [c.id for c in group.cards]:  # voted in an earlier group: bring it back here
        group.cards.insert(0, card)
    group.cursor = [c.id for c in group.cards].index(card.id)
    group.last_message = f"undid your vote on #{card.id}"


def move(group: Group, step: int) -> None:
    if group.cards:
        group.cursor = (group.cursor + step) % len(group.cards)


MARKS = {"accept": "✓ accepted", "reject": "✗ rejected", "skip": "– skipped"}


@st.fragment
def grid(home, store, actor: Actor, filters: QueueFilter, size: int) -> None:
    """Oxen's feedback-example layout, keyboard first: ← → choose a card, 1 2 3 vote on it."""
    selection = home.config.selection
    show_reported()
    group: Group | None = st.session_state.get("group")
    if group is None or (group.actor, group.filters, group.size) != (actor, filters, size):
        with stopping_on_error():
            group = st.session_state["group"] = load_group(store, actor, filters, size, selection)
    empty = not group.cards
    with st.container(horizontal=True):
        st.button(
            "Previous", key="grid-left", shortcut="left", on_click=reporting(move), args=(group, -1), disabled=empty
        )
        st.button("Next", key="grid-right", shortcut="right", on_click=reporting(move), args=(group, 1), disabled=empty)
        for label, key, value in KEYED_VOTES:
            st.button(label, key=f"grid-{value}", shortcut=key, type="primary" if value == "accept" else "secondary",
                      on_click=reporting(grid_vote), args=(store, group, value, None, selection), disabled=empty)  # fmt: skip
        st.button("Undo", key="grid-undo", shortcut="u", on_click=reporting(grid_undo), args=(store, group))
        st.button("New group", key="grid-new", shortcut="n", on_click=reporting(next_group), args=(store, group, selection),
                  help="Leave the cards without a vote for later and show the next group")  # fmt: skip
    last = f" · last: {group.last_message}" if group.last_message else ""
    done = f"{len(group.marks)} of {len(group.cards)} voted · " if group.cards else ""
    st.caption(f"{done}{vote_count(group.votes)} by {actor.name}{last}")
    if empty:
        st.success("Nothing left to rate here. Generate more, or change the filters.")
        return
    short = f" (only {len(group.cards)} of this prompt's images are left for you)" if len(group.cards) < size else ""
    st.text(f"{group.cards[0].prompt or '(no prompt)'}{short}")
    per_row = min(4, len(group.cards))
    for row_start in range(0, len(group.cards), per_row):
        for offset, column in enumerate(st.columns(per_row)):
            index = row_start + offset
            if index >= len(group.cards):
                break
            card = group.cards[index]
            mark = group.marks.get(card.id)
            key = (
                "grid-cursor"
                if index == group.cursor
                else f"grid-voted-{mark}-{card.id}"
                if mark
                else f"grid-card-{card.id}"
            )
            with column.container(key=key):
                st.image(str(home.root / card.path), width="stretch")
                st.caption(f"#{card.id} · {round_label(card.round)}" + (f" · **{MARKS[mark]}**" if mark else ""))
                left, right = st.columns(2)
                # icons alone on narrow cards: at 1024 px the words were cut to "A" and "R"
                left.button("", key=f"grid-accept-{card.id}", icon=":material/thumb_up:", width="stretch",
                            help="Accept", on_click=reporting(grid_vote),
                            args=(store, group, "accept", index, selection))  # fmt: skip
                right.button("", key=f"grid-reject-{card.id}", icon=":material/thumb_down:", width="stretch",
                             help="Reject", on_click=reporting(grid_vote),
                             args=(store, group, "reject", index, selection))  # fmt: skip


def page() -> None:
    home, store = project()
    keep_rating_keys()
    st.header("Rate", anchor=False)
    actor = who(store, need_name=True)
    rater = actor.name
    filters = sidebar_filters(store)
    with st.sidebar:
        mode = st.radio("Layout", ["One at a time", "Grid"], key="layout", horizontal=True)
        size = 4
        if mode == "Grid":
            size = int(st.number_input("Cards per group", min_value=2, max_value=12, value=4, key="grid_size"))
            st.caption(f"Rating as **{rater}** · keys: ← → choose a card, 1 accept, 2 reject, 3 skip, u undo, "
                       "n new group")  # fmt: skip
        else:
            st.caption(f"Rating as **{rater}** · keys: 1 accept, 2 reject, 3 skip, u undo")
    if mode == "One at a time":
        one_at_a_time(home, store, actor, filters)
    else:
        grid(home, store, actor, filters, size)


def as_page() -> st.Page:
    """This page, as the navigation and the links to it name it."""
    return st.Page(page, title="Rate", icon=":material/thumbs_up_down:", url_path="rate", default=True)
