"""Live view of background jobs, refreshed every two seconds without rerunning the page."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from herdbook.app import rate
from herdbook.app.context import action
from herdbook.feedback.catalog import cards
from herdbook.jobs import list_jobs, mark_lost_jobs


@st.fragment(run_every=2)
def jobs_panel(home, store, kind: str) -> None:
    with action(store) as session:
        mark_lost_jobs(session, home.config.jobs.stale_after_seconds)
        jobs = [j for j in list_jobs(session, limit=20) if j.kind == kind][:5]
        rows = [(j.id, j.status, j.progress, j.message, j.error, j.log, j.created_at) for j in jobs]
        # the images of the newest generation job, as they are stored
        made = (jobs[0].result or {}).get("candidate_ids", []) if jobs and kind == "generate" else []
        images = cards(session, made)
    if not rows:
        st.caption("No jobs yet.")
        return
    running = [job_id for job_id, status, *_ in rows if status == "running"]
    watched = f"jobs-running-{kind}"
    ended = set(st.session_state.get(watched, ())) - set(running)
    st.session_state[watched] = running
    if ended and kind == "train":
        st.rerun()  # a round just ended: the whole page, so its loss chart and grid show it
    for number, (job_id, status, progress, message, error, log, created) in enumerate(rows):
        label = f"Job {job_id}: {status}"
        if status == "running":
            st.progress(progress, text=f"{label} · {message}")
        elif status == "queued" and running:  # a worker is busy with it: this one comes next
            st.info(f"{label} · starts when job {running[-1]} is done")
        elif status == "queued":
            waited = (datetime.now(UTC) - created.replace(tzinfo=created.tzinfo or UTC)).total_seconds()
            st.info(f"{label} · {message}" + (" — is `herdbook worker` running?" if waited > 15 else ""))
        elif status == "finished" and number == 0 and images:
            st.success(f"{label} · {len(images)} image(s) added to the rating queue")
            st.page_link(rate.as_page(), label=f"Rate the {len(images)} new image(s)", icon=":material/thumbs_up_down:")
        elif status == "finished" and number == 0 and kind == "generate":  # every image was drawn before
            st.success(f"{label} · no new images: this prompt at these seeds was drawn before (change the first seed)")
        elif status == "finished":
            st.success(label)
        elif status == "failed":
            st.error(f"{label}: {error}")
        else:
            st.warning(f"{label}: {error}")
        if number == 0 and images:
            st.image([str(home.root / card.path) for card in images], caption=[f"#{card.id}" for card in images],
                     width=128)  # fmt: skip
        if log and status in ("running", "failed"):
            with st.expander("Log", expanded=False):
                st.code(log[-3000:], language=None)
