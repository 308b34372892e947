"""The ``herdbook`` command: a thin layer over db/, feedback/ and training/.

Each command opens one transaction, calls services, and prints. Errors a user can act on
are HerdbookError subclasses, turned into one ``error:`` line and exit status 1 here.
Heavy imports (torch, diffusers, oxen, streamlit) happen inside the commands that need them,
so ``herdbook status`` stays quick.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click

from herdbook.errors import HerdbookError

HOME_HELP = "Project folder (default: $HERDBOOK_HOME, else ./herdbook-home)."


def home_option(command):
    return click.option(
        "--home", "home_path", envvar="HERDBOOK_HOME", type=click.Path(file_okay=False), help=HOME_HELP
    )(command)


def json_option(what: str = "list"):
    return click.option("--json", "as_json", is_flag=True, help=f"Print a JSON {what}.")


class HerdbookGroup(click.Group):
    """Turns every expected failure of every command into ``error:`` lines and exit status 1,
    in this one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HerdbookError as error:
            for line in str(error).splitlines() or [type(error).__name__]:
                click.secho(f"error: {line}", fg="red", err=True)
            ctx.exit(1)
        except click.UsageError as error:  # a bad option or argument: one line, as every error
            usage_error(error, ctx)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            usage_error(error, ctx)


def usage_error(error: click.UsageError, ctx: click.Context) -> None:
    """Click's three lines of usage and exit 2 become one line and exit status 1."""
    where = (error.ctx or ctx).command_path
    message = error.format_message().rstrip(".")
    click.secho(f"error: {message[:1].lower()}{message[1:]} (see {where} --help)", fg="red", err=True)
    ctx.exit(1)


def store_of(home):
    """The home's store, closed when the command ends, whatever way it ends."""
    for problem, fix in home.readable_by_others():
        click.secho(f"warning: {problem}: {fix}", fg="yellow", err=True)
    store = home.open_store()
    click.get_current_context().call_on_close(store.close)
    return store


def progress_bar(total: int, unit: str, label: str):
    """The one progress bar of every long command, on standard error."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=label, file=sys.stderr, disable=None)


def operator():
    """The CLI acts as an admin: whoever runs it can read the home's files anyway."""
    import getpass

    from herdbook.db.access import Actor

    return Actor(f"{getpass.getuser()} (cli)", "admin", operator=True)


def printable(text: str) -> str:
    """A file name fit for a terminal: control characters (newlines, escape sequences) shown
    escaped, so no name can forge or recolour a line of herdbook's output."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def emit_json(value) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


@click.group(cls=HerdbookGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="herdbook")
def main():
    """herdbook: rate generated images, curate the best into versioned datasets, and
    retrain Stable Diffusion on them with Dreambooth, round after round.

    \b
    Typical loop:
      herdbook init                      make a project home
      herdbook import DIR --prompts CSV  add candidate images (or: herdbook generate)
      herdbook serve                     rate them in the browser
      herdbook sync                      commit the curated dataset to Oxen
      herdbook train                     run a Dreambooth round on it
    """
    # transformers warns at import that image processors lack torchvision, which herdbook never
    # uses: every train and demo began with two such lines. A user's own setting wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@main.command()
@home_option
@click.option(
    "--base-model",
    default=None,
    help="Hub id or local folder of a diffusers Stable Diffusion model [default: CompVis/stable-diffusion-v1-4].",
)
@click.option(
    "--instance-prompt", default=None, help='Prompt that names the character [default: "an image of the oxenai ox"].'
)
@click.option("--class-prompt", default=None, help="Prompt for the character's class, used by prior preservation.")
@click.option(
    "--database-url",
    default=None,
    help="Any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/herdbook (pip install 'herdbook[postgres]') "
    "[default: herdbook.db in the home].",
)
def init(home_path, base_model, instance_prompt, class_prompt, database_url):
    """Create a project home: config, database and Oxen dataset repository."""
    from herdbook.config import ProjectConfig
    from herdbook.home import init_home

    given = {"base_model": base_model, "instance_prompt": instance_prompt, "class_prompt": class_prompt}
    given["database_url"] = database_url
    config = ProjectConfig().with_changes(**{k: v for k, v in given.items() if v})
    home = init_home(home_path, config)
    click.echo(f"Created a herdbook project in {home.root}")
    from herdbook.training.rounds import family_label

    kind = family_label(config.base_model) if Path(config.base_model).expanduser().is_dir() else None
    click.echo(f"  base model:      {config.base_model}" + (f" ({kind})" if kind else ""))
    click.echo(f"  instance prompt: {config.instance_prompt}")
    click.echo("Next: herdbook import DIR --prompts prompts.csv, then herdbook serve")


@main.command("import")
@home_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--prompts",
    "prompts_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with a file (or path) column relative to FOLDER and a prompt column; a rating column becomes votes.",
)
@click.option("--rater", default=None, help="Whose ratings the CSV's rating column holds.")
def import_(home_path, folder, prompts_csv, rater):
    """Add the images in FOLDER as candidates.

    Bad files (unreadable, empty, truncated, not an image, too many pixels, paths that leave
    FOLDER, repeats) are listed with the reason and skipped; the rest import. The exit status
    is 1 when anything was skipped."""
    from herdbook.feedback.ingest import import_images, rows_from_csv, rows_from_folder
    from herdbook.home import load_home

    home = load_home(home_path)
    rows = rows_from_csv(prompts_csv) if prompts_csv else rows_from_folder(folder)
    store = store_of(home)
    with progress_bar(len(rows), "image", "Importing") as bar, store.sessions() as session:
        report = import_images(
            session,
            folder,
            home.candidates_dir,
            home.root,
            rows,
            rater=rater,
            progress=lambda done, total: bar.update(done - bar.n),
            checkpoint=session.commit,  # a batch at a time: votes are not locked out meanwhile
        )
        session.commit()
    for name, reason in report.problems:
        click.secho(f"skipped {printable(name)}: {reason}", fg="yellow", err=True)
    for name in report.prompts_corrected:
        click.echo(f"prompt of {printable(name)} corrected")
    click.echo(
        f"Imported {len(report.added)} new image(s); {len(report.already_present)} already present; "
        f"{report.votes} vote(s) recorded; {len(report.problems)} skipped."
    )
    if not report.ok:
        sys.exit(1)


@main.command()
@home_option
@click.argument("candidate", type=int)
@click.argument("value", type=click.Choice(["accept", "reject", "skip"]))
@click.option("--rater", required=True, help="Who is voting.")
def vote(home_path, candidate, value, rater):
    """Record one vote on CANDIDATE (its id, as `herdbook candidates` shows)."""
    from herdbook.feedback.votes import cast_vote
    from herdbook.home import load_home

    store = store_of(load_home(home_path))
    store.write(lambda session: cast_vote(session, candidate, rater, value))  # waits out a busy database
    click.echo(f"{rater}: {value} on candidate {candidate}")


@main.command()
@home_option
@click.option("--all", "everything", is_flag=True, help="Score every candidate again, not only the unscored ones.")
def score(home_path, everything):
    """Score candidates by how like the instance set they are (DINO) and how like their prompt
    (CLIP-T): imported ones, and those made while no model was at hand. Generated candidates are
    scored as they are made. The models are [evaluation] dino_model and clip_model."""
    from herdbook.feedback.catalog import unscored_candidates
    from herdbook.home import load_home
    from herdbook.training.rounds import score_candidates

    home = load_home(home_path)
    store = store_of(home)
    with store.transaction() as session:
        ids = unscored_candidates(session, everything)
    if not ids:
        click.echo("Every candidate is scored already (--all scores them again)")
        return
    quiet_libraries()
    unscored = score_candidates(store, home.project, ids)
    if unscored:
        raise HerdbookError(unscored)
    click.echo(f"Scored {len(ids)} candidate(s): `herdbook candidates --json` lists dino and clip_t")


@main.command()
@home_option
@json_option()
@click.option("--unrated-by", default=None, metavar="NAME", help="Only candidates this rater has not voted on.")
def candidates(home_path, as_json, unrated_by):
    """List candidates with their prompt, round and vote counts."""
    from herdbook.feedback.catalog import list_candidates
    from herdbook.home import load_home

    home = load_home(home_path)
    store = store_of(home)
    with store.transaction() as session:
        rows = list_candidates(session, unrated_by=unrated_by, weigh=home.config.selection.weigh_raters)
    if as_json:
        emit_json([r.as_dict() for r in rows])
        return
    click.echo(f"{'id':>6}  {'accepts':>7}  {'rejects':>7}  {'round':>5}  source_name / prompt")
    for r in rows:
        click.echo(
            f"{r.id:>6}  {r.accepts:>7}  {r.rejects:>7}  {r.round if r.round is not None else '-':>5}  {r.source_name}  {r.prompt!r}"
        )


@main.command()
@home_option
@click.option("--rater", required=True, help="Whose queue.")
@click.option("-n", "count", default=10, show_default=True, type=click.IntRange(1), help="How many images.")
@click.option(
    "--order",
    type=click.Choice(["uncertainty", "oldest", "newest-round", "most-alike"]),
    default="uncertainty",
    show_default=True,
    help="uncertainty: where a vote can still change the selection; oldest: arrival order; "
    "most-alike: most like the instance set by DINO similarity (scored when generated).",
)
@json_option()
def queue(home_path, rater, count, order, as_json):
    """The next images RATER would be shown on the Rate page, in order, with the reason for each."""
    from herdbook.feedback.catalog import cards
    from herdbook.feedback.votes import QueueFilter, next_entries, nothing_left_text
    from herdbook.home import load_home

    home = load_home(home_path)
    with store_of(home).transaction() as session:
        entries = next_entries(session, rater, QueueFilter(order=order), count, home.config.selection)
        names = {c.id: c.source_name for c in cards(session, [e.id for e in entries])}
    rows = [
        {"id": e.id, "source_name": names.get(e.id, ""), "reason": e.reason, "uncertainty": e.uncertainty}
        for e in entries
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        with store_of(home).transaction() as session:
            click.echo(nothing_left_text(session, rater, home.config.selection))
    for r in rows:
        click.echo(f"#{r['id']:<6} {r['source_name']}  {r['reason']}")


@main.command()
@home_option
@json_option()
def doctor(home_path, as_json):
    """Check a home: config, database integrity, candidate files, the Oxen repository and the
    versions recorded. Says what to do about each problem; exit status 1 when there is one."""
    from dataclasses import asdict

    from herdbook.doctor import examine

    findings = examine(home_path)
    if as_json:
        emit_json([asdict(f) for f in findings])
    else:
        for f in findings:
            click.secho(f"{'ok ' if f.ok else 'NO '} {f.what}", fg=None if f.ok else "red")
            if f.fix:
                click.echo(f"    -> {f.fix}")
    if not all(f.ok for f in findings):
        sys.exit(1)


@main.command()
@home_option
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def backup(home_path, dest):
    """Copy the project into DEST while the app runs: a consistent database snapshot, the
    config, the candidate images and the Oxen repository. DEST must be new or empty."""
    from herdbook.backup import backup as take_backup
    from herdbook.home import load_home

    manifest = take_backup(load_home(home_path), dest)
    click.echo(f"Backed up {manifest['candidates']} candidates and {manifest['votes']} votes to {dest}")


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--home", "home_path", required=True, type=click.Path(file_okay=False), help="The new home to make.")
def restore(source, home_path):
    """Make a new project home from the backup in SOURCE (never over an existing one)."""
    from herdbook.backup import restore as restore_backup

    home = restore_backup(source, home_path)
    click.echo(f"Restored {source} into {home.root}")


@main.command()
@home_option
@json_option("object")
def status(home_path, as_json):
    """Counts of candidates, votes, raters, rounds and dataset versions."""
    from herdbook.feedback.catalog import agreement_sentences, fidelity_agreement, rater_agreement, rater_reliability
    from herdbook.feedback.catalog import status as project_status
    from herdbook.feedback.selection import weighing_text
    from herdbook.feedback.votes import selection_settledness
    from herdbook.home import load_home

    home = load_home(home_path)
    store = store_of(home)
    with store.transaction() as session:
        counts = project_status(session)
        agreement = rater_agreement(session)
        firm = selection_settledness(session, home.config.selection)
        metrics_agree = fidelity_agreement(session)
        reliable = rater_reliability(session)
    if as_json:
        emit_json(
            {
                "home": str(home.root),
                **counts,
                "agreement": agreement,
                "selection": asdict(firm),
                "fidelity_agreement": metrics_agree,
                "rater_reliability": reliable,
                "weigh_raters": home.config.selection.weigh_raters,
            }
        )
        return
    click.echo(f"herdbook project in {home.root}")
    for key, value in counts.items():
        click.echo(f"  {key.replace('_', ' '):<17}{value}")
    overall = agreement["overall"]
    if overall["images"]:
        click.echo(
            f"  agreement        {overall['pairwise']:.0%} of rater pairs agree, Fleiss' kappa {overall['fleiss_kappa']:.2f}"
            f" ({overall['images']} images with 2+ votes)"
        )
    click.echo(f"  selection        {firm.describe()}")
    click.echo(f"  votes            {weighing_text(home.config.selection)}")
    for r in reliable:
        if r["shared_images"]:
            click.echo(
                f"  rater {r['name']:<10} weight {r['weight']:.2f}: accepts {r['sensitivity']:.0%} of good images, "
                f"rejects {r['specificity']:.0%} of bad ones (over {r['shared_images']} shared images)"
            )
    for sentence in agreement_sentences(metrics_agree):
        click.echo(f"  {sentence}")


@main.command()
@home_option
@click.option("--serve/--no-serve", default=False, help="Start the app on the demo project afterwards.")
@click.option("--port", default=8501, show_default=True)
def demo(home_path, serve, port):
    """Make a demo project of drawn cartoon oxen, ready to rate with no model."""
    import tempfile

    from herdbook.demo import write_demo_images
    from herdbook.feedback.ingest import import_images, rows_from_csv
    from herdbook.home import init_home, load_home, resolve_home

    root = resolve_home(home_path)
    if (root / "herdbook.toml").exists():
        home = load_home(root)
        click.echo(f"Using the existing project in {home.root}")
    else:
        home = init_home(root, demo_config(root))
        with tempfile.TemporaryDirectory() as scratch:
            table = write_demo_images(Path(scratch))
            with store_of(home).transaction() as session:
                report = import_images(session, Path(scratch), home.candidates_dir, home.root, rows_from_csv(table))
        click.echo(f"Drew {len(report.added)} cartoon oxen into a demo project in {home.root}")
    if serve:
        from herdbook.serve import serve as run_app

        sys.exit(run_app(home, port=port))
    else:
        click.echo(f"Rate them: herdbook serve --home {home.root}")


def demo_config(root: Path):
    """A demo home's config: with the training extras installed, a tiny random-weight Stable
    Diffusion built here (no download) as its base model, so the whole loop runs on a CPU in
    seconds (its images are noise); without them, the usual hub id and rating only."""
    from herdbook.config import ProjectConfig
    from herdbook.demo import DEMO_MODEL
    from herdbook.training.rounds import training_available

    config = ProjectConfig()
    if training_available():
        return config
    from herdbook.training.tiny import RESOLUTION, save_tiny_clip, save_tiny_dino, save_tiny_pipeline

    quiet_libraries()  # no progress bar for writing a model of a few kilobytes
    model = save_tiny_pipeline(root / "models" / DEMO_MODEL)
    judges = {"dino_model": str(save_tiny_dino(root / "models" / "demo-dino")),
              "clip_model": str(save_tiny_clip(root / "models" / "demo-clip"))}  # fmt: skip
    click.echo(f"Built a tiny random-weight demo model in {model}, and DINO and CLIP to judge rounds (all noise)")
    return config.with_changes(
        base_model=str(model),
        resolution=RESOLUTION,
        training=config.training.with_changes(steps=20, checkpoint_every=10),
        evaluation=config.evaluation.with_changes(seeds=[0, 1], **judges),  # two images a prompt: CPU time
    )


def policy_options(command):
    options = [
        click.option("--min-votes", type=click.IntRange(0), help="Accept/reject votes an image needs."),
        click.option("--min-score", type=click.FloatRange(0, 1), help="Lowest Wilson score (1 accept = 0.21)."),
        click.option("--top-k", type=click.IntRange(1), help="How many instance images at most."),
        click.option("--max-per-prompt", type=click.IntRange(1), help="At most this many per prompt."),
        click.option(
            "--near-duplicate-distance",
            type=click.IntRange(0, 64),
            help="Perceptual-hash bits under which two images are copies.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("select")
@home_option
@policy_options
@json_option("list of the selected images")
@click.option("--all", "show_all", is_flag=True, help="Also list the images left out, with the reason.")
@click.option(
    "--dry-run", is_flag=True, help="Only show; do not save the options given as the project's selection policy."
)
def select_(home_path, as_json, show_all, dry_run, **policy_changes):
    """Show which rated images would become the instance data, and why.

    Options given here (e.g. --top-k 10) are saved in herdbook.toml as the policy that
    `herdbook sync` uses, unless --dry-run is given."""
    from herdbook.feedback.curation import decide
    from herdbook.home import load_home

    home = load_home(home_path)
    changes = {k: v for k, v in policy_changes.items() if v is not None}
    policy = home.config.selection.with_changes(**changes)
    with store_of(home).transaction() as session:
        decisions, candidates = decide(session, policy)
    shown = decisions if show_all else [d for d in decisions if d.selected]
    if as_json:
        emit_json(
            [
                {
                    "id": d.image.id,
                    "source_name": d.image.source_name,
                    "prompt": d.image.prompt,
                    "accepts": d.image.tally.accepts,
                    "rejects": d.image.tally.rejects,
                    "score": round(d.score, 4),
                    "selected": d.selected,
                    "reason": d.reason,
                    "path": str(home.root / candidates[d.image.id].path),
                }
                for d in shown
            ]
        )
    else:
        chosen = sum(d.selected for d in decisions)
        click.echo(f"{chosen} of {len(decisions)} rated images selected")
        for d in shown:
            mark = "+" if d.selected else "-"
            click.echo(f" {mark} #{d.image.id:<5} {d.score:.2f}  {d.image.source_name}  {d.reason}")
    if changes and not dry_run:
        from herdbook.home import change_config

        change_config(home.root, selection=policy)
        if not as_json:
            click.echo(f"Saved the selection policy in {home.config_path}")


@main.command()
@home_option
@click.option("--push", is_flag=True, help="Also push to the Oxen remote set in herdbook.toml.")
def sync(home_path, push):
    """Commit the curated dataset (rated images, ratings, votes, selection) to Oxen.

    A sync with nothing new makes no commit. A failed push keeps the local commit."""
    from herdbook.actions import sync_dataset
    from herdbook.home import load_home

    home = load_home(home_path)
    store = store_of(home)
    with store.transaction() as session:
        result = sync_dataset(session, operator(), home)
    for note in result.notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    for recovered in result.recovered:
        click.echo(f"Recorded commit {recovered.commit_id[:10]}, left unrecorded by an interrupted sync")
    if result.version is None:
        click.echo("Nothing new to commit")
    else:
        v = result.version
        click.echo(f"Dataset version {v.id}: commit {v.commit_id[:10]} ({v.n_selected} selected of {v.n_images} rated)")
        click.echo(f"  {result.diff.summary()}")
    if push:
        from herdbook.feedback.curation import mark_pushed, push_versions
        from herdbook.feedback.versioning import redact

        push_versions(home.dataset_repo)  # outside any transaction: votes go on meanwhile
        with store.transaction() as session:
            mark_pushed(session)
        click.echo(f"Pushed to {redact(home.config.oxen.remote)}")


@main.group(invoke_without_command=True)
@home_option
@json_option()
@click.pass_context
def datasets(ctx, home_path, as_json):
    """List dataset versions; `datasets diff A B` and `datasets export VERSION DIR` below.

    A VERSION is its number, 'latest', or an Oxen commit id (or prefix)."""
    ctx.ensure_object(dict)["home_path"] = home_path
    if ctx.invoked_subcommand is not None:
        return
    from herdbook.feedback.curation import list_versions
    from herdbook.home import load_home

    with store_of(load_home(home_path)).transaction() as session:
        versions = list_versions(session)
        rows = [
            {
                "id": v.id,
                "commit_id": v.commit_id,
                "branch": v.branch,
                "images": v.n_images,
                "selected": v.n_selected,
                "votes": v.n_votes,
                "pushed": v.pushed,
                "created": v.created_at.isoformat(timespec="seconds"),
                "message": v.message,
            }
            for v in versions
        ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No dataset versions yet: rate some images, then `herdbook sync`")
    for r in rows:
        click.echo(
            f"{r['id']:>3}  {r['commit_id'][:10]}  {r['created']}  {r['selected']:>3} selected / {r['images']:>4} rated"
        )


@datasets.command("diff")
@click.argument("old")
@click.argument("new")
@home_option
@click.pass_context
def datasets_diff(ctx, old, new, home_path):
    """Images added and removed, and ratings changed, from version OLD to NEW."""
    from herdbook.feedback.curation import diff_versions
    from herdbook.home import load_home

    home = load_home(home_path or ctx.obj.get("home_path"))
    with store_of(home).transaction() as session:
        diff = diff_versions(session, home.dataset_dir, old, new)
    click.echo(diff.summary())

    def image(row) -> str:  # a person knows an image by its number and name, not its hash path
        return f"#{row.get('candidate_id', '?')} {printable(row.get('source_name') or row['path'])}"

    for row in diff.added:
        click.echo(
            f"  + added     {image(row)}  {row['rating']} ({row['accepts']}/{row['rejects']})  {row['prompt']!r}"
        )
    for row in diff.removed:
        click.echo(f"  - removed   {image(row)}  {row['prompt']!r}")
    for before, after in diff.rating_changed:
        click.echo(
            f"  ~ rating    {image(after)}  {before['rating']} ({before['accepts']}/{before['rejects']})"
            f" -> {after['rating']} ({after['accepts']}/{after['rejects']})"
        )
    for row in diff.selected_added:
        click.echo(f"  > selected  {image(row)}  score {row['score']}")
    for row in diff.selected_removed:
        click.echo(f"  < dropped   {image(row)}  {row.get('reason', '')}")


@datasets.command("export")
@click.argument("version")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@home_option
@click.option("--clear", is_flag=True, help="Empty DEST first when it holds files (else a non-empty DEST is refused).")
@click.pass_context
def datasets_export(ctx, version, dest, home_path, clear):
    """Check VERSION's instance images out of Oxen into DEST (what training reads), with an
    instance.csv whose paths name the exported files."""
    import shutil

    from herdbook.feedback.curation import export_version
    from herdbook.home import load_home

    if dest.exists() and any(dest.iterdir()):
        if not clear:
            raise HerdbookError(f"{dest} is not empty: choose a new folder, or --clear to empty it first")
        shutil.rmtree(dest)
    home = load_home(home_path or ctx.obj.get("home_path"))
    with store_of(home).transaction() as session:
        written = export_version(session, home.dataset_dir, version, dest)
    click.echo(f"Exported {len(written)} instance image(s) to {dest}")


def background_loading(chain, lora: bool = False):
    """Start reading the model's weight files and importing the training libraries, each in a
    thread, and compiling the GPU kernels in a child process, while this process does what
    needs none of them (the database, the dataset export). Returns the importing thread, to
    join before this thread imports any of those libraries."""
    from herdbook.training import precompile
    from herdbook.training.models import import_training_in_background, prefetch

    precompile.start()
    prefetch(chain)
    return import_training_in_background(chain, lora)


def quiet_libraries() -> None:
    """diffusers and transformers log config notes on every load; users want the progress bar."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)


@main.command()
@home_option
@click.option("--prompt", required=True, help="What to draw.")
@click.option("-n", "--count", default=4, show_default=True, type=click.IntRange(1, 1000), help="How many images.")
@click.option("--round", "round_ref", default="base", show_default=True, help="Model: base, latest, or a round number.")
@click.option("--seed", default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--steps", default=30, show_default=True, type=click.IntRange(1, 500), help="Denoising steps.")
@click.option(
    "--resolution",
    type=click.IntRange(8, 4096),
    help="Pixels per side [default: the project's, else the model's: 512 SD-1.x, 1024 SDXL].",
)
@click.option("--negative", "negative_prompt", default="", help="Negative prompt.")
@click.option(
    "--guidance",
    "guidance_scale",
    type=float,
    help="Classifier-free guidance [default: the model's, 7.5 SD-1.x, 5 SDXL].",
)
@click.option("--queue", "queued", is_flag=True, help="Queue the job for `herdbook worker` and return at once.")
@click.option("--here", is_flag=True, help="Draw in this process even when a worker runs on this home.")
def generate(
    home_path, prompt, count, round_ref, seed, steps, resolution, negative_prompt, guidance_scale, queued, here
):
    """Generate candidates from the base model or a finished round; they join the rating queue.

    Where `herdbook worker` (or `herdbook serve`) runs on this home and is not training, the
    images are drawn there and this command follows the job: the worker has the libraries
    imported and keeps the model loaded, so it starts drawing at once."""
    from herdbook.home import load_home

    home = load_home(home_path)
    store = store_of(home)
    options = {
        "count": count,
        "seed": seed,
        "steps": steps,
        "resolution": resolution,
        "negative_prompt": negative_prompt,
        "guidance_scale": guidance_scale,
    }
    from herdbook.training.rounds import chain_problem, model_for

    with store.transaction() as session:
        model, _ = model_for(session, home.project, round_ref)
    problem = chain_problem(model)  # fail now, not in the worker
    if problem:
        raise HerdbookError(problem)
    worker = None if queued else worker_to_use(store, home, here)
    if queued or worker:
        from herdbook.jobs import submit
        from herdbook.training.rounds import resolve_round

        with store.transaction() as session:
            resolve_round(session, round_ref)
            job = submit(
                session,
                home,
                "generate",
                {"prompt": prompt, "round": round_ref, **{k: v for k, v in options.items() if v is not None}},
            )
        if queued:
            click.echo(f"Queued job {job.id}; `herdbook worker` runs it, `herdbook jobs` follows it")
            return
        done = run_in_worker(store, home, job.id, worker, count, "image", "Generating")
        phases = done.result.get("phases", {})
        report_added(done.result["candidate_ids"], round_ref, f"{sum(phases.values()):.1f} s in the worker", phases)
        return
    from herdbook.training.phases import PhaseClock, process_started_at
    from herdbook.training.rounds import generate_candidates, score_candidates

    background_loading(model).join()
    quiet_libraries()

    clock = PhaseClock(process_started_at())
    clock.end("start-up")
    with progress_bar(count, "image", "Generating") as bar:
        ids = generate_candidates(
            store,
            home.project,
            prompt,
            round_ref,
            progress=lambda done, total: bar.update(done - bar.n),
            clock=clock,
            **options,
        )
    unscored = score_candidates(store, home.project, ids)  # DINO to the instance set, CLIP-T to the prompt
    clock.end("scoring")
    if unscored:
        click.secho(f"note: {unscored}", fg="yellow", err=True)
    report_added(ids, round_ref, f"{clock.total:.1f} s in all", clock.phases)


def report_added(ids: list[int], round_ref: str, spent: str, phases: dict[str, float]) -> None:
    """generate's closing lines, wherever the images were drawn."""
    click.echo(
        f"Added {len(ids)} candidate(s) from {round_ref}: ids {ids[0] if ids else '-'}..{ids[-1] if ids else '-'}"
    )
    click.echo(f"  {spent}: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))


@main.command()
@home_option
@click.option(
    "--mode", type=click.Choice(["full", "lora"]), help="Full UNet fine-tune or LoRA [default: the project's]."
)
@click.option("--steps", type=click.IntRange(1), help="Training steps [default 400].")
@click.option(
    "--resolution",
    type=click.IntRange(8, 4096),
    help="Pixels per side, a multiple of 8 [default: the project's, else the model's: 512 SD-1.x, 1024 SDXL].",
)
@click.option("--learning-rate", type=float, help="[default 5e-6 full, 1e-4 LoRA].")
@click.option("--dataset", default="latest", show_default=True, help="Dataset version to train on.")
@click.option(
    "--from",
    "start_from",
    default=None,
    help="Start from a round number or 'base' [default: the newest finished round].",
)
@click.option(
    "--prior-preservation/--no-prior-preservation",
    default=None,
    help="Class images keep the model's idea of the class.",
)
@click.option("--weight-by-rating", is_flag=True, help="Show higher-rated images more often.")
@click.option(
    "--lr-scheduler",
    type=click.Choice(["constant", "constant_with_warmup", "linear", "cosine"]),
    help="Learning-rate schedule [default: constant].",
)
@click.option("--lr-warmup-steps", type=click.IntRange(0), help="Steps of linear warm-up [default 0].")
@click.option(
    "--train-text-encoder/--no-train-text-encoder", default=None, help="Also train the text encoder (or its LoRA)."
)
@click.option(
    "--gpus",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Processes, one per GPU, through accelerate's launcher.",
)
@click.option("--queue", "queued", is_flag=True, help="Queue the round for `herdbook worker` and return at once.")
@click.option("--here", is_flag=True, help="Train in this process even when a worker runs on this home.")
def train(
    home_path,
    mode,
    steps,
    resolution,
    learning_rate,
    dataset,
    start_from,
    prior_preservation,
    weight_by_rating,
    lr_scheduler,
    lr_warmup_steps,
    train_text_encoder,
    gpus,
    queued,
    here,
):
    """Run a Dreambooth round on a dataset version's instance images.

    Where `herdbook worker` (or `herdbook serve`) runs on this home and is not training, the
    round runs there and this command follows it: the worker has the libraries imported."""
    from herdbook.db.access import record_action
    from herdbook.home import load_home
    from herdbook.training.rounds import plan_round

    home = load_home(home_path)
    store = store_of(home)
    worker = None if queued else worker_to_use(store, home, here)
    with store.transaction() as session:
        record = plan_round(
            session,
            home.project,
            dataset=dataset,
            start_from=start_from,
            weight_by_rating=weight_by_rating,
            mode=mode,
            steps=steps,
            resolution=resolution,
            learning_rate=learning_rate,
            prior_preservation=prior_preservation,
            lr_scheduler=lr_scheduler,
            lr_warmup_steps=lr_warmup_steps,
            train_text_encoder=train_text_encoder,
        )
        round_id, parent, total = record.id, record.parent_id, record.settings["steps"]
        detail = {"round": round_id}
        if queued or worker:
            from herdbook.jobs import submit

            job = submit(session, home, "train", {"round_id": round_id, "processes": gpus})
            detail["job"] = job.id
        record_action(session, operator(), "start round", **detail)
    if queued:
        click.echo(f"Round {round_id} queued as job {job.id}; `herdbook worker` runs it, `herdbook jobs` follows it")
        return
    click.echo(
        f"Round {round_id} ({record.mode}) from {'base' if parent is None else f'round {parent}'} on dataset version {record.dataset_version_id}"
    )
    if worker:
        run_in_worker(store, home, job.id, worker, total, "step", f"Round {round_id}")
        from herdbook.training.rounds import get_round

        with store.transaction() as session:
            report_round(get_round(session, round_id))
        return
    train_here(store, home, round_id, total, gpus)


def worker_to_use(store, home, here: bool) -> dict | None:
    """The worker running on this home that this command's work goes to, if any: it has the
    libraries imported (seconds of every command's start) and keeps models loaded. Not with
    --here, nor while it trains or has a round queued (that takes minutes)."""
    if here:
        return None
    from herdbook.jobs import live_worker, rounds_in_jobs

    worker = live_worker(home.root)
    if worker is None:
        return None
    with store.transaction() as session:  # a round queued or running keeps the worker for minutes
        return None if rounds_in_jobs(session) else worker


def run_in_worker(store, home, job_id: int, worker: dict, total: int, unit: str, label: str):
    """Follow a job the worker runs, with this command's progress bar; its last state once it
    finished. Ctrl-C leaves the job to the worker."""
    from herdbook.jobs import follow

    click.echo(f"Job {job_id} runs in the worker (pid {worker['pid']}); --here would run it in this process")
    with progress_bar(total, unit, label) as bar:

        def on_change(state) -> None:
            bar.update(round(state.progress * total) - bar.n)
            bar.set_postfix_str(state.message[:60])

        try:
            done = follow(store, home.root, job_id, on_change)
        except KeyboardInterrupt:
            click.echo(f"\nJob {job_id} goes on in the worker; `herdbook jobs` follows it", err=True)
            raise SystemExit(130) from None
    if done.status != "finished":
        raise HerdbookError(
            f"job {job_id} {'did not finish' if done.status == 'running' else done.status}: {done.error}"
        )
    return done


def train_here(store, home, round_id: int, total: int, processes: int = 1) -> None:
    """Run a recorded round in this process with a progress bar (new, or resumed from its checkpoint).

    The model's files are read and the training libraries imported in the background meanwhile:
    the dataset's export waits on child processes, and the imports alone take seconds."""
    from herdbook.training.phases import process_started_at
    from herdbook.training.rounds import planned_settings, run_round

    with store.transaction() as session:
        planned = planned_settings(session, round_id)
        imports = background_loading(planned.model, lora=planned.mode == "lora")

    def prepare() -> None:
        imports.join()
        quiet_libraries()

    with progress_bar(total, "step", f"Round {round_id}") as bar:

        def on_step(step, _total, loss):
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.4f}")

        finished = run_round(
            store,
            home.project,
            round_id,
            progress=on_step,
            processes=processes,
            started_at=process_started_at(),
            prepare=prepare,
        )
    report_round(finished)


def report_round(finished) -> None:
    """What a finished round says at the end of `herdbook train`: its output, speed, phases, scores."""
    from herdbook.training.rounds import report_lines

    m = finished.metrics
    click.echo(f"Round {finished.id} finished: {finished.output_path}")
    if m["steps_run"]:
        click.echo(
            f"  {m['seconds_per_step']:.3f} s/step from step {m['first_step']}; "
            f"probe loss {m['probe_loss_before']:.4f} -> {m['probe_loss_after']:.4f}"
        )
    if m.get("phases"):
        spent = ", ".join(f"{name} {seconds:.1f}" for name, seconds in m["phases"].items() if seconds >= 0.05)
        click.echo(f"  {m['phases_total_seconds']:.1f} s in all: {spent}")
    for line in report_lines(m.get("evaluation")):
        click.echo(f"  {line}")


@main.group(invoke_without_command=True)
@home_option
@json_option()
@click.pass_context
def rounds(ctx, home_path, as_json):
    """List rounds with their parent, dataset version, mode, status and output, as a tree;
    `rounds resume ROUND` and `rounds cancel ROUND` below. A round whose process died (no
    heartbeat for [jobs] stale_after_seconds) shows as interrupted."""
    ctx.ensure_object(dict)["home_path"] = home_path
    if ctx.invoked_subcommand is not None:
        return
    from herdbook.home import load_home
    from herdbook.training.rounds import lineage, list_rounds, mark_interrupted_rounds

    home = load_home(home_path)
    with store_of(home).transaction() as session:
        mark_interrupted_rounds(session, home.config.jobs.stale_after_seconds)
        rows, tree = list_rounds(session), lineage(session)
    if as_json:
        emit_json(rows)
        return
    for line in tree:
        click.echo(line)
    for r in rows:
        timing = f"{r['seconds_per_step']:.3f} s/step" if r["seconds_per_step"] else ""
        fidelity = f"DINO {r['dino']:.3f}" if r["dino"] is not None else ""
        click.echo(
            f"round {r['id']}: {r['status']}, {r['mode']}, step {r['step']} of {r['steps']}, dataset v{r['dataset_version']} {timing} {fidelity} {r['output'] or r['error'] or ''}"
        )


@rounds.command("report")
@click.argument("round_id", type=int)
@home_option
@json_option()
@click.pass_context
def rounds_report(ctx, round_id, home_path, as_json):
    """A finished round's fidelity report: DINO and CLIP-I (how like the instance images its
    validation images are), CLIP-T (how like their prompts), each beside its starting model's."""
    from herdbook.home import load_home
    from herdbook.training.rounds import report_lines, round_report_of

    with store_of(load_home(home_path or ctx.obj.get("home_path"))).transaction() as session:
        report = round_report_of(session, round_id)
    if as_json:
        emit_json(report)
        return
    for line in report_lines(report):
        click.echo(line)


@rounds.command("evaluate")
@click.argument("round_id", type=int)
@home_option
@click.pass_context
def rounds_evaluate(ctx, round_id, home_path):
    """Make a finished round's fidelity report again: after setting [evaluation] dino_model and
    clip_model to models this machine has, or after a report was interrupted."""
    from herdbook.home import load_home
    from herdbook.training.rounds import evaluate_round, report_lines

    home = load_home(home_path or ctx.obj.get("home_path"))
    quiet_libraries()  # no progress bars for loading DINO and CLIP
    report = evaluate_round(store_of(home), home.project, round_id)
    for line in report_lines(report):
        click.echo(line)
    if "error" in report:
        sys.exit(1)


@rounds.command("resume")
@click.argument("round_id", type=int)
@home_option
@click.option("--queue", "queued", is_flag=True, help="Queue it for `herdbook worker` instead of training here.")
@click.pass_context
def rounds_resume(ctx, round_id, home_path, queued):
    """Carry an interrupted, failed or pending round on from its last checkpoint."""
    from herdbook.db.access import record_action
    from herdbook.home import load_home
    from herdbook.training.rounds import mark_interrupted_rounds, resumable, resume_point

    home = load_home(home_path or ctx.obj.get("home_path"))
    store = store_of(home)
    with store.transaction() as session:
        mark_interrupted_rounds(session, home.config.jobs.stale_after_seconds)
        record = resumable(session, round_id, home.config.jobs.stale_after_seconds)
        total = record.settings["steps"]
        carrying_on = resume_point(record)
        record_action(session, operator(), "resume round", round=round_id)
        if queued:
            from herdbook.jobs import submit

            job = submit(session, home, "train", {"round_id": round_id})
    if queued:
        click.echo(f"Round {round_id} queued to resume as job {job.id}")
        return
    click.echo(f"Resuming round {round_id} {carrying_on}")
    train_here(store, home, round_id, total)


@rounds.command("cancel")
@click.argument("round_id", type=int)
@home_option
@click.pass_context
def rounds_cancel(ctx, round_id, home_path):
    """Mark a pending, interrupted or failed round as cancelled: it will not run."""
    from herdbook.actions import cancel_round
    from herdbook.home import load_home

    home = load_home(home_path or ctx.obj.get("home_path"))
    with store_of(home).transaction() as session:
        cancel_round(session, operator(), home, round_id)
    click.echo(f"Round {round_id} cancelled")


@rounds.command("delete")
@click.argument("round_id", type=int)
@home_option
@click.pass_context
def rounds_delete(ctx, round_id, home_path):
    """Delete a failed or cancelled round: its record and its folder (checkpoints, logs)."""
    from herdbook.actions import delete_round
    from herdbook.home import load_home
    from herdbook.training.rounds import remove_round_files

    home = load_home(home_path or ctx.obj.get("home_path"))
    with store_of(home).transaction() as session:
        folder = delete_round(session, operator(), home, round_id)
    remove_round_files(folder)
    click.echo(f"Round {round_id} deleted")


@main.command()
@home_option
@json_option()
def jobs(home_path, as_json):
    """Background jobs with their status and progress; jobs whose worker died are marked lost."""
    from herdbook.home import load_home
    from herdbook.jobs import list_jobs, live_worker, mark_lost_jobs

    home = load_home(home_path)
    worker = live_worker(home.root)
    with store_of(home).transaction() as session:
        mark_lost_jobs(session, home.config.jobs.stale_after_seconds)
        rows = [
            {
                "id": j.id,
                "kind": j.kind,
                "status": j.status,
                "progress": j.progress,
                "message": j.message,
                "error": j.error,
                "result": j.result,
            }
            for j in list_jobs(session)
        ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(
            f"job {r['id']:>4} {r['kind']:<9} {r['status']:<9} {r['progress']:>4.0%}  {r['error'] or r['message']}"
        )
    if worker:
        click.echo(f"a worker runs on this home (pid {worker['pid']} on {worker['host']}): generate and train go to it")
    else:
        click.echo("no worker runs on this home: `herdbook worker` (or `herdbook serve`) runs queued jobs")


@main.command()
@home_option
@click.option("--workers", default=1, show_default=True, help="Jobs run at once (one per GPU is sensible).")
def worker(home_path, workers):
    """Run queued jobs (training, generation) until stopped with Ctrl-C. It first loads the
    model the Generate page offers first (where it is on this machine), so the first job starts
    drawing at once, and keeps the models it draws from loaded between jobs."""
    from herdbook.home import load_home
    from herdbook.jobs import run_worker
    from herdbook.training import precompile

    quiet_libraries()
    home = load_home(home_path)
    precompile.start()  # the first job's kernels, while the worker waits for it
    click.echo(f"herdbook worker for {home.root} ({home.config.jobs.queue} queue); Ctrl-C stops it")
    run_worker(home, workers, announce=click.echo)


@main.command()
@home_option
@click.option("--port", default=8501, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on; 0.0.0.0 opens it to the network."
)
@click.option("--worker/--no-worker", "with_worker", default=True, help="Also run a job worker.")
def serve(home_path, port, host, with_worker):
    """Start the rating app (and a job worker) on this project."""
    from herdbook.db.access import sign_in_required
    from herdbook.home import load_home
    from herdbook.serve import is_loopback
    from herdbook.serve import serve as run_app

    home = load_home(home_path)
    with store_of(home).transaction() as session:
        required = sign_in_required(session)
    if not required and not is_loopback(host):
        raise HerdbookError(
            f"no users, so no sign-in: the app stays on this machine (127.0.0.1), not {host}. "
            "Add one first: herdbook users add NAME --role admin"
        )
    sys.exit(run_app(home, port=port, host=host, with_worker=with_worker))


@main.group(invoke_without_command=True)
@home_option
@json_option()
@click.pass_context
def users(ctx, home_path, as_json):
    """People who sign in to the app. The first user turns sign-in on: after it, nobody rates
    without signing in, raters rate as themselves, and only admins generate, train, sync and
    delete. Without users the app is open and stays on 127.0.0.1."""
    ctx.ensure_object(dict)["home_path"] = home_path
    if ctx.invoked_subcommand is not None:
        return
    from herdbook.db.access import list_users
    from herdbook.home import load_home

    with store_of(load_home(home_path)).transaction() as session:
        rows = list_users(session)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No users: the app is open to whoever reaches it, and `herdbook serve` keeps it on 127.0.0.1")
    for row in rows:
        click.echo(f"{printable(row['name']):<24} {row['role']:<6} since {row['created']}")


def read_password() -> str:
    """Typed twice at a terminal; else the first line of standard input (for scripts)."""
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return sys.stdin.readline().rstrip("\r\n")


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["rater", "admin"]), required=True, help="admin: also runs things.")
@home_option
@click.pass_context
def users_add(ctx, name, role, home_path):
    """Add a user; the password is asked for (or read from standard input) and kept only as a hash."""
    from herdbook.db.access import add_user, record_action
    from herdbook.home import load_home

    home = load_home(home_path or ctx.obj.get("home_path"))
    password = read_password()
    with store_of(home).transaction() as session:
        user = add_user(session, name, role, password)
        record_action(session, operator(), "add user", name=user.name, role=role)
    click.echo(f"Added {printable(user.name)} ({role}); the app now asks everyone to sign in")


def change_user(ctx, home_path, action: str, name: str, change, with_password: bool = False) -> None:
    """``change(session)`` on a user (``change(session, password)``, asked for once the home is
    found, ``with_password``), recorded in the log as ``action`` by the CLI's operator."""
    from herdbook.db.access import record_action
    from herdbook.home import load_home

    home = load_home(home_path or ctx.obj.get("home_path"))
    asked = [read_password()] if with_password else []
    with store_of(home).transaction() as session:
        change(session, *asked)
        record_action(session, operator(), action, name=name)


@users.command("password")
@click.argument("name")
@home_option
@click.pass_context
def users_password(ctx, name, home_path):
    """Set a user's password (asked for, or read from standard input)."""
    from herdbook.db.access import set_password

    change_user(ctx, home_path, "set password", name, lambda session, password: set_password(session, name, password),
                with_password=True)  # fmt: skip
    click.echo(f"Password of {printable(name)} changed")


@users.command("unlock")
@click.argument("name")
@home_option
@click.pass_context
def users_unlock(ctx, name, home_path):
    """Let NAME sign in again after failed tries held it back (and the browsers that tried)."""
    from herdbook.db.access import unlock_sign_in

    change_user(ctx, home_path, "unlock user", name, lambda session: unlock_sign_in(session, name))
    click.echo(f"{printable(name)} may sign in again")


@users.command("remove")
@click.argument("name")
@home_option
@click.pass_context
def users_remove(ctx, name, home_path):
    """Remove a user (their votes stay, under their name)."""
    from herdbook.db.access import remove_user

    change_user(ctx, home_path, "remove user", name, lambda session: remove_user(session, name))
    click.echo(f"Removed {printable(name)}")


@main.command()
@home_option
@click.option("-n", "count", default=30, show_default=True, help="How many, newest first.")
@json_option()
def log(home_path, count, as_json):
    """Who did what: syncs, rounds, generation, users (votes carry their rater)."""
    from herdbook.db.access import recent_actions
    from herdbook.home import load_home

    with store_of(load_home(home_path)).transaction() as session:
        rows = [
            {"at": a.at.isoformat(timespec="seconds"), "actor": a.actor, "action": a.action, "detail": a.detail}
            for a in recent_actions(session, count)
        ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        detail = ", ".join(f"{k}={printable(str(v))}" for k, v in row["detail"].items())
        click.echo(f"{row['at']}  {printable(row['actor'])}: {row['action']}  {detail}")


def run() -> None:
    """The `herdbook` command: ``main``, then an exit that skips tearing the interpreter down.
    After a round, finalising torch's, CUDA's and the other libraries' modules took ~0.9 s of
    the user's wait on a CPU with the tiny model, for nothing: what an exit owes (the threads'
    work, atexit's: logging's flush, temporary folders) still runs first."""
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    leave(code)


def leave(code: int) -> None:
    import atexit
    import threading

    threading._shutdown()  # what the interpreter does first at exit: joins the threads that aren't daemons
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
