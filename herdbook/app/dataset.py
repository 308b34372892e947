"""Dataset: versions in Oxen, what each changed, galleries, and why each image is in or out."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from herdbook.app.context import action, project, reload_home
from herdbook.feedback.catalog import cards, rater_agreement
from herdbook.feedback.curation import decide, diff_versions, list_versions, sync, version_images
from herdbook.feedback.images import thumbnail_data_url
from herdbook.feedback.votes import selection_settledness


def page() -> None:
    _, store = project()
    home = reload_home()
    st.header("Curated datasets")
    if st.button("Sync now", type="primary", help="Commit the current selection to the Oxen repository"):
        with action(store) as session:
            result = sync(session, home.dataset_repo, home.root, home.config.selection)
        st.success(f"Dataset version {result.version.id} committed." if result.version else "Nothing new to commit.")

    with action(store) as session:
        versions = [
            {
                "version": v.id,
                "commit": v.commit_id[:10],
                "created": v.created_at,
                "selected": v.n_selected,
                "rated": v.n_images,
                "votes": v.n_votes,
            }
            for v in list_versions(session)
        ]
        decisions, _ = decide(session, home.config.selection)
        agreement = rater_agreement(session)
        firm = selection_settledness(session, home.config.selection)
        by_id = {c.id: c for c in cards(session, [d.image.id for d in decisions])}

    st.subheader("Versions")
    if not versions:
        st.info("No version yet: rate some images, then sync.")
    else:
        st.dataframe(pd.DataFrame(versions), hide_index=True, width="stretch")
        chosen = st.selectbox("Show version", [v["version"] for v in versions][::-1])
        with action(store) as session:
            gallery = version_images(session, chosen)
            previous = chosen - 1 if chosen > 1 else None
            diff = diff_versions(session, home.dataset_dir, previous, chosen) if previous else None
        if diff is not None:
            st.caption(f"Since version {previous}: {diff.summary()}")
        st.image([str(home.root / c.path) for c in gallery], caption=[c.prompt[:40] for c in gallery], width=160)

    overall = agreement["overall"]
    if overall["images"]:
        st.subheader("Rater agreement")
        st.caption(
            f"{overall['pairwise']:.0%} of rater pairs agree; Fleiss' kappa {overall['fleiss_kappa']:.2f} "
            f"over {overall['images']} images with two or more votes (1 = perfect, 0 = chance)"
        )
        per_prompt = [{"prompt": p, **v} for p, v in agreement["by_prompt"].items()]
        st.dataframe(pd.DataFrame(per_prompt), hide_index=True, width="stretch")

    st.subheader("Current selection")
    if firm.selected:
        left, middle, right = st.columns(3)
        left.metric(
            "Expected to stay",
            f"{firm.expected_survivors:.0%}",
            help=f"The share of the top {home.config.selection.top_k} that more votes are expected to keep. "
            + firm.describe(),
        )
        middle.metric("Rated, undecided", firm.undecided, help="Rated images more votes could still move in or out")
        right.metric("Unrated, open", firm.unrated_open, help="Unrated images that could still belong in the top K")
        if firm.expected_survivors >= 0.95 and not firm.undecided:
            st.success("The selection is settled: more votes are unlikely to change it. A round is worth starting.")
    p = home.config.selection
    st.caption(
        f"Policy from herdbook.toml: the best {p.top_k}, at least {p.min_votes} decisive vote(s) each, "
        f"score at least {p.min_score:g}, at most {p.max_per_prompt} per prompt"
    )
    rows = [
        {
            "selected": d.selected,
            "image": str(home.root / by_id[d.image.id].path),
            "id": d.image.id,
            "prompt": d.image.prompt,
            "accepts": d.image.tally.accepts,
            "rejects": d.image.tally.rejects,
            "score": round(d.score, 3),
            "why": d.reason,
        }
        for d in decisions
        if d.image.id in by_id
    ]
    if not rows:
        st.info("No rated images yet.")
        return
    frame = pd.DataFrame(rows)
    frame["image"] = frame["image"].map(thumbnail_data_url)
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={"image": st.column_config.ImageColumn("image", width="small")},
    )
