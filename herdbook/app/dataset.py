"""Dataset: versions in Oxen, what each changed, galleries, and why each image is in or out."""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from herdbook import actions
from herdbook.app.context import action, local_time, project, reload_home, who
from herdbook.feedback.catalog import (
    agreement_sentences,
    cards,
    fidelity_agreement,
    rater_agreement,
    rater_reliability,
)
from herdbook.feedback.curation import decide, diff_versions, list_versions, version_images
from herdbook.feedback.images import thumbnail_data_url
from herdbook.feedback.selection import weighing_text
from herdbook.feedback.votes import selection_settledness

THUMBNAIL = st.column_config.ImageColumn("Image", width="small")


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(path: str, size: int = 96) -> str:
    return thumbnail_data_url(path, size)  # candidate files are named by their hash: never stale


def short(text: str, limit: int = 48) -> str:
    """Cut at a word, never inside one."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] or text[:limit]
    return cut.rstrip(" ,;:") + "…"


def gallery(images: list[tuple[str, str]], size: int = 160) -> None:
    """Thumbnails with captions cut at a word; the whole prompt shows on hover."""
    figures = "".join(
        f'<figure title="{html.escape(caption)}" style="margin:0;width:{size}px">'
        f'<img src="{thumbnail(path, size)}" style="width:{size}px;height:{size}px;object-fit:cover;border-radius:4px">'
        f'<figcaption style="font-size:0.8rem;opacity:0.75;line-height:1.2">{html.escape(short(caption))}</figcaption>'
        "</figure>"
        for path, caption in images
    )
    st.html(f'<div style="display:flex;flex-wrap:wrap;gap:12px">{figures}</div>')


def version_changes(store, home, chosen: int) -> None:
    previous = chosen - 1 if chosen > 1 else None
    if previous is None:
        return
    with action(store) as session:
        diff = diff_versions(session, home.dataset_dir, previous, chosen)
        changes = diff.changes()
        paths = {c.id: c.path for c in cards(session, [c["candidate_id"] for c in changes if c["candidate_id"]])}
    st.markdown(f"**Since version {previous}:** {diff.summary()}")
    if not changes:
        return
    rows = [
        {
            "Image": thumbnail(str(home.root / paths[c["candidate_id"]])) if c["candidate_id"] in paths else None,
            "#": c["candidate_id"],
            "Name": c["source_name"],
            "Change": c["change"],
            "Before": c["before"],
            "After": c["after"],
            "Prompt": c["prompt"],
        }
        for c in changes
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={"Image": THUMBNAIL})


def page() -> None:
    _, store = project()
    home = reload_home()
    st.header("Curated datasets")
    actor = who(store)
    if actor.is_admin and st.button(
        "Sync now", type="primary", help="Commit the current selection to the Oxen repository"
    ):
        with st.spinner("Committing the selection to the Oxen repository..."), action(store) as session:
            result = actions.sync_dataset(session, actor, home)
        if result.version:
            v = result.version
            st.success(
                f"Dataset version {v.id} committed ({v.commit_id[:10]}): {v.n_selected} selected of {v.n_images} "
                f"rated; {result.diff.summary()}."
            )
        else:
            st.info("Nothing new to commit: the newest version already holds these votes and this selection.")
        for note in result.notes:
            st.warning(note)

    with action(store) as session:
        versions = [
            {
                "Version": v.id,
                "Commit": v.commit_id[:10],
                "Created": local_time(v.created_at),
                "Selected": v.n_selected,
                "Rated": v.n_images,
                "Votes": v.n_votes,
                "Pushed": "yes" if v.pushed else "no",
            }
            for v in list_versions(session)
        ]
        decisions, _ = decide(session, home.config.selection)
        agreement = rater_agreement(session)
        metrics_agree = fidelity_agreement(session)
        reliable = [r for r in rater_reliability(session) if r["shared_images"]]
        firm = selection_settledness(session, home.config.selection)
        by_id = {c.id: c for c in cards(session, [d.image.id for d in decisions])}

    st.subheader("Versions")
    if not versions:
        st.info("No version yet: rate some images, then sync.")
    else:
        st.dataframe(pd.DataFrame(versions), hide_index=True, width="stretch")
        chosen = st.selectbox("Show version", [v["Version"] for v in versions][::-1])
        version_changes(store, home, chosen)
        with action(store) as session:
            selected = [(str(home.root / c.path), f"#{c.id} {c.prompt}") for c in version_images(session, chosen)]
        st.markdown(f"**Selected in version {chosen}**")
        gallery(selected)

    overall = agreement["overall"]
    if overall["images"]:
        st.subheader("Rater agreement")
        st.caption(
            f"{overall['pairwise']:.0%} of rater pairs agree; Fleiss' kappa {overall['fleiss_kappa']:.2f} "
            f"over {overall['images']} images with two or more votes (1 = perfect, 0 = chance)"
        )
        per_prompt = [
            {
                "Prompt": prompt,
                "Images": v["images"],
                "Pairs agreeing": f"{v['pairwise']:.0%}",
                "Fleiss' kappa": f"{v['fleiss_kappa']:.2f}",
            }
            for prompt, v in agreement["by_prompt"].items()
        ]
        st.dataframe(pd.DataFrame(per_prompt), hide_index=True, width="stretch")
    if reliable:
        st.subheader("Rater reliability")
        st.caption(
            "Estimated from how each rater agrees with the others (a Dawid-Skene model): how often they accept a "
            "good image and reject a bad one. A weight near 0 means their votes tell little (someone who accepts "
            "everything). " + weighing_text(home.config.selection)
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "Rater": r["name"],
                        "Weight": f"{r['weight']:.2f}",
                        "Accepts good": f"{r['sensitivity']:.0%}",
                        "Rejects bad": f"{r['specificity']:.0%}",
                        "Shared images": r["shared_images"],
                    }
                    for r in reliable
                ]
            ),
            hide_index=True,
            width="content",
        )
    for sentence in agreement_sentences(metrics_agree):
        st.caption(sentence)

    st.subheader("Current selection")
    if firm.selected:
        said = firm.describe()
        st.caption(said[:1].upper() + said[1:])
        first, left, middle, right = st.columns(4)
        first.metric(
            "Est. precision",  # fits its quarter of the page at 1024 px
            f"{firm.expected_precision:.0%}",
            help="The expected share of the selected images that most raters would accept, from the votes so far, "
            "each rater counted once (bench/queue_scenarios.txt checks it against simulated teams)",
        )
        left.metric(
            "Expected to stay",
            f"{firm.expected_survivors:.0%}",
            help="The share of the selected images still selected once the votes still to come are in, "
            "over 64 futures drawn from the votes so far. " + firm.describe(),
        )
        middle.metric("Rated, undecided", firm.undecided, help="Rated images more votes could still move in or out")
        right.metric("Unrated, open", firm.unrated_open, help="Unrated images that could still belong in the top K")
        if firm.expected_survivors >= 0.95 and not firm.undecided and firm.unrated_better < 0.5:
            st.success("The selection is settled: more votes are unlikely to change it. A round is worth starting.")
    p = home.config.selection
    st.caption(
        f"Policy from herdbook.toml: the best {p.top_k}, at least {p.min_votes} decisive vote(s) each, "
        f"score at least {p.min_score:g}, at most {p.max_per_prompt} per prompt"
    )
    # the decision first and the long prompt last: at 1024 px the counts and the reason stay in view
    rows = [
        {
            "In": "✓" if d.selected else "",
            "Image": thumbnail(str(home.root / by_id[d.image.id].path)),
            "#": d.image.id,
            "Accepts": d.image.tally.accepts,
            "Rejects": d.image.tally.rejects,
            "Score": f"{d.score:.2f}",
            "Why": d.reason,
            "Prompt": d.image.prompt,
        }
        for d in decisions
        if d.image.id in by_id
    ]
    if not rows:
        st.info("No rated images yet.")
        return
    narrow = {name: st.column_config.Column(width="small") for name in ("In", "#", "Accepts", "Rejects", "Score")}
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        column_config={"Image": THUMBNAIL, **narrow, "Why": st.column_config.TextColumn(width="medium")},
    )
