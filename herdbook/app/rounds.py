"""Rounds: start a Dreambooth round, follow it live, and see whether the loop is working."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from herdbook import actions
from herdbook.app.context import (
    action,
    local_time,
    project,
    reload_home,
    reporting,
    round_label,
    show_reported,
    shown,
    who,
)
from herdbook.app.jobs_panel import jobs_panel
from herdbook.app.model import base_model_notice
from herdbook.db.access import Actor
from herdbook.feedback.catalog import acceptance_by_round
from herdbook.feedback.curation import list_versions
from herdbook.training.rounds import (
    FIDELITY_NAMES,
    comparison_grid,
    lineage,
    list_rounds,
    loss_histories,
    mark_interrupted_rounds,
    remove_round_files,
    training_available,
)

FORGETTABLE = ("failed", "cancelled")


def start_form(home, store, actor: Actor, blocked: bool) -> None:
    defaults = home.config.training
    with action(store) as session:
        versions = [v.id for v in list_versions(session)][::-1]
        finished = [r["id"] for r in list_rounds(session) if r["status"] == "finished"][::-1]
    if not versions:
        st.info("Training needs a dataset version: rate images, then sync on the Dataset page.")
        return
    with st.form("start-round"):
        left, right = st.columns(2)
        version = left.selectbox("Dataset version", versions)
        start = right.selectbox(
            "Start from",
            ["newest round", "base", *finished] if finished else ["base"],
            format_func=lambda s: s if isinstance(s, str) else round_label(s),
        )
        mode = left.radio(
            "Mode", ["full", "lora"], index=0 if defaults.mode == "full" else 1, horizontal=True, key="round_mode",
            format_func={"full": "Full fine-tune", "lora": "LoRA"}.get,
        )  # fmt: skip
        steps = right.number_input("Steps", min_value=1, max_value=20_000, value=defaults.steps, key="round_steps")
        lr = left.number_input(
            "Learning rate (blank: the mode's default)", value=None, format="%.2e", placeholder="5e-6 full · 1e-4 LoRA"
        )
        prior = right.checkbox("Prior preservation", value=defaults.prior_preservation)
        submitted = st.form_submit_button("Start round", key="start-round", type="primary", disabled=blocked)
    if submitted:
        start_from = {"newest round": "parent", "base": "base"}.get(start, start)
        with action(store) as session:
            record, job = actions.start_round(session, actor, home, dataset=version, start_from=start_from, mode=mode,
                                              steps=int(steps), learning_rate=lr, prior_preservation=prior)  # fmt: skip
        st.toast(f"Round {record.id} queued as job {job.id}", icon=":material/model_training:")


def round_table(rows: list[dict]) -> pd.DataFrame:
    """What a round is and how it stands first (at 1024 px the rest scrolls), its numbers after."""
    return pd.DataFrame(
        [
            {
                "Round": r["id"],
                "Status": r["status"],
                "Started": local_time(r["started"], short=True),
                "Finished": local_time(r["finished"], short=True),
                "From": "base" if r["parent"] is None else f"round {r['parent']}",
                "Mode": {"full": "full", "lora": "LoRA"}.get(r["mode"], r["mode"]),
                "Model": {"sd1": "SD 1.x", "sdxl": "SDXL"}.get(r["family"], r["family"]),
                "Dataset": f"v{r['dataset_version']}" if r["dataset_version"] else "",
                "Steps done": f"{r['step']} of {r['steps']}",
                "DINO": shown(r["dino"], 3),
                "CLIP-T": shown(r["clip_t"], 3),
                "Size (px)": shown(r["resolution"]),
                "Seconds per step": shown(r["seconds_per_step"], 3),
                "Peak GPU memory (GB)": shown(r["peak_memory_gb"], 1),
                "Error": shown(r["error"]),
            }
            for r in rows
        ]
    )


@reporting
def resume(home, store, actor: Actor, round_id: int) -> None:
    with store.transaction() as session:
        job = actions.resume_round(session, actor, home, round_id)
    st.toast(f"Round {round_id} queued to resume as job {job.id}")


@reporting
def forget(home, store, actor: Actor, round_id: int) -> None:
    with store.transaction() as session:
        folder = actions.delete_round(session, actor, home, round_id)
    remove_round_files(folder)
    st.toast(f"Round {round_id} deleted")


@st.fragment(run_every=2)
def rounds_section(home, store, actor: Actor) -> None:
    """Rounds as they are now: a failed job shows as a failed round without a reload."""
    show_reported()  # from the Resume and Delete buttons, which rerun only this fragment
    with action(store) as session:
        mark_interrupted_rounds(session, home.config.jobs.stale_after_seconds)
        rows, tree = list_rounds(session), lineage(session)
    if not rows:
        return
    st.subheader("Rounds")
    st.code("\n".join(tree), language=None)
    for row in rows:
        if not actor.is_admin or row["status"] not in ("interrupted", *FORGETTABLE):
            continue
        text, resume_button, delete_button = st.columns([6, 1, 1], vertical_alignment="center")
        if row["status"] == "interrupted":
            text.warning(f"Round {row['id']} was interrupted at step {row['step']} of {row['steps']}.")
        else:
            text.error(
                f"Round {row['id']} {row['status']} at step {row['step']} of {row['steps']}: {row['error'] or ''}"
            )
        if row["status"] != "cancelled":
            resume_button.button("Resume", key=f"resume-{row['id']}", type="primary", width="stretch",
                                 on_click=resume, args=(home, store, actor, row["id"]))  # fmt: skip
        if row["status"] in FORGETTABLE:
            delete_button.button("Delete", key=f"delete-{row['id']}", width="stretch",
                                 help="Remove the round, its checkpoint and logs", on_click=forget,
                                 args=(home, store, actor, row["id"]))  # fmt: skip
    st.dataframe(round_table(rows), hide_index=True, width="stretch")
    times = time_table(rows)
    if times is not None:
        st.caption("Where each round's time went, from the start of its command or job (the newest first)")
        st.dataframe(times, width="content", height=35 * (len(times) + 1) + 3)  # every phase, no scrolling


def time_table(rows: list[dict], newest: int = 5) -> pd.DataFrame | None:
    """Where the newest rounds' time went, from the user's click or command: a row per phase
    (the total first), a column per round, so it fits a narrow window however many phases."""
    timed = [r for r in rows if r.get("phases")][-newest:][::-1]
    if not timed:
        return None
    columns = {f"round {r['id']}": {"in all": sum(r["phases"].values()), **r["phases"]} for r in timed}
    frame = pd.DataFrame(columns).fillna(0.0)
    return frame.map(lambda seconds: f"{seconds:.1f} s")


def loss_chart(store) -> None:
    with action(store) as session:
        histories = loss_histories(session)
    if not histories:
        return
    st.subheader("Training loss")
    frame = pd.concat(
        [pd.DataFrame(history, columns=["step", name]).set_index("step") for name, history in histories.items()], axis=1
    )
    smooth = frame.rolling(10, min_periods=1).mean().reset_index().melt("step", var_name="round", value_name="loss")
    # the axis spans the losses (not from 0): a round's fall from 1.09 to 1.07 is what there is to see
    chart = (
        alt.Chart(smooth.dropna())
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("loss:Q", title="loss (mean of 10 steps)", scale=alt.Scale(zero=False, nice=True)),
            color=alt.Color("round:N", title=None),
        )
    )
    st.altair_chart(chart, width="stretch")


def comparison(home, store) -> None:
    with action(store) as session:
        grid = comparison_grid(session, home.project)
    if not grid["columns"]:
        return
    st.subheader("Comparison at fixed prompts and seeds")
    st.caption(" · ".join(source["label"] for source in grid["columns"]) + ", left to right")
    for prompt in grid["prompts"]:
        st.text(prompt)
        for seed in grid["seeds"]:
            row = [(s["label"], s["images"].get((prompt, seed))) for s in grid["columns"]]
            images = [(label, path) for label, path in row if path is not None and path.exists()]
            st.image(
                [str(path) for _, path in images], caption=[f"{label} · seed {seed}" for label, _ in images], width=192
            )


def fidelity_frame(rows: list[dict]) -> pd.DataFrame:
    """Each judged round's DINO, CLIP-I and CLIP-T with their spread, and its starting model's."""
    records = []
    for r in rows:
        report = r["fidelity_report"] or {}
        if "error" in report or not report:
            continue
        for key, name in FIDELITY_NAMES.items():
            mean, spread = report[key]["mean"], report[key]["spread"]
            records.append({"round": f"round {r['id']}", "metric": name, "model": "the round", "mean": mean,
                            "low": mean - spread, "high": mean + spread})  # fmt: skip
            start = (report.get("start") or {}).get(key)
            if start:
                records.append({"round": f"round {r['id']}", "metric": name, "model": "its starting model",
                                "mean": start["mean"], "low": None, "high": None})  # fmt: skip
    return pd.DataFrame(records, columns=["round", "metric", "model", "mean", "low", "high"])


def best_round_text(rows: list[dict]) -> str | None:
    judged = sorted((r for r in rows if r["dino"] is not None), key=lambda r: -r["dino"])
    if not judged:
        return None
    best = judged[0]
    text = f"Round {best['id']} is the most like the instance images: DINO {best['dino']:.3f}"
    if best["start_dino"] is not None:
        text += f", {best['dino'] - best['start_dino']:+.3f} on its starting model"
    if len(judged) > 1:
        text += f", {best['dino'] - judged[1]['dino']:+.3f} on round {judged[1]['id']}"
    return text + "."


def fidelity(store) -> None:
    """The round reports over the lineage: which round is best, and by how much."""
    with action(store) as session:
        rows = [r for r in list_rounds(session) if r["status"] == "finished"]
    if not rows:
        return
    st.subheader("How like the character, by round")
    frame = fidelity_frame(rows)
    if not frame.empty:
        models = alt.Scale(domain=["its starting model", "the round"], range=["#9aa0a6", "#e8710a"])
        base = alt.Chart(frame).encode(
            x=alt.X("round:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("model:N", sort=["its starting model", "the round"]),
            color=alt.Color("model:N", title=None, scale=models, legend=alt.Legend(orient="bottom")),
        )
        points = base.mark_point(filled=True, size=70).encode(
            y=alt.Y("mean:Q", title="mean cosine similarity", scale=alt.Scale(zero=False, nice=True)),
            tooltip=["round", "metric", "model", alt.Tooltip("mean:Q", format=".3f")],
        )
        spread = base.mark_rule(strokeWidth=2).encode(y="low:Q", y2="high:Q")
        chart = (
            (points + spread)
            .properties(width=150, height=220)
            .facet(column=alt.Column("metric:N", title=None, sort=list(FIDELITY_NAMES.values())))
        )
        st.altair_chart(chart)
        best = best_round_text(rows)
        if best:
            st.markdown(best)
        st.caption(
            "DINO and CLIP-I: each validation image against every instance image of the round; CLIP-T: each image "
            "against its prompt; bars span one standard deviation. The DreamBooth paper reads a DINO difference of "
            "about 0.1, a CLIP-T difference of about 0.05, as significant."
        )
    for r in rows:
        if r["fidelity_missing"]:
            st.caption(f"Round {r['id']}: {r['fidelity_missing']}")


def acceptance(store) -> None:
    with action(store) as session:
        rows = acceptance_by_round(session)
    if not rows:
        return
    st.subheader("Share of candidates raters accepted, by round")
    frame = pd.DataFrame([{"from": round_label(r["round"]), "accepted share": r["share"]} for r in rows])
    # a share's axis is always 0-100 % (an axis ending at the tallest bar made 64 % look full)
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("from:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("accepted share:Q", title="accepted / rated", scale=alt.Scale(domain=[0, 1]),
                    axis=alt.Axis(format="%")),
        )
    )  # fmt: skip
    st.altair_chart(chart, width="stretch")
    st.caption(" · ".join(f"{round_label(r['round'])}: {r['accepted']} of {r['rated']}" for r in rows))


def page() -> None:
    _, store = project()
    home = reload_home()
    st.header("Dreambooth rounds")
    actor = who(store)
    missing = training_available()
    if missing:
        st.error(f"Training needs the training extras: {missing}.")
    unusable = base_model_notice(home, store, "A round", actor)
    if actor.is_admin:
        start_form(home, store, actor, blocked=bool(missing or unusable))
    else:
        st.info("Starting rounds is for admins; how they went is below.")
    st.subheader("Training jobs")
    jobs_panel(home, store, "train")
    rounds_section(home, store, actor)
    loss_chart(store)
    fidelity(store)
    acceptance(store)
    comparison(home, store)
