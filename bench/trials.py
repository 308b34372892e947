"""Load and crash trials: what a team's judgement survives.

    python bench/trials.py                # the long trials (minutes): 8 raters, 10,000 votes, 52 kill -9
    python bench/trials.py --short        # the same trials, small: CI runs this (tests/test_trials.py)

1. Load: 8 raters vote at once, each in its own process through the services the app calls
   (`herdbook.actions.vote` in one `Store.write`), while `herdbook vote` processes vote beside
   them. Every acknowledged vote must be the rater's current vote (or replaced by a later one
   of theirs); no rater has two current votes on one image.
2. kill -9 at random moments, rotating through voting, import, sync and training. After each:
   `herdbook doctor` (integrity, files, Oxen repository, versions recorded) must pass, the next
   `herdbook sync` must work, a second sync must find nothing new (the committed tables are what
   the database holds), an interrupted round must resume and finish, and what was acknowledged
   before the kill must be there (votes; an import run again completes it once). Each kill waits
   for its work to begin (a vote acknowledged, a candidate committed, the dataset written, a
   checkpoint saved); a process that ended before its kill is counted apart, not as a kill.
3. Hostile files: each refused on a line naming it, the good one imported with its one rating,
   nothing else stored.
4. Sign-in is on throughout (the raters are users). A tab opened while the app was still open,
   and a removed admin's tab, try every action: none may get through. 25 password guesses from
   one address: at most 10 are checked, and the right password does not get in after them.

Prints what it found; exit status 1 on any loss or inconsistency. bench/trials.txt holds a run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERDBOOK = [sys.executable, "-m", "herdbook.cli"]
SHORT = {"raters": 8, "votes": 400, "cli_votes": 8, "kills": 8, "images": 60}
LONG = {"raters": 8, "votes": 10_000, "cli_votes": 120, "kills": 52, "images": 300}
KINDS = ("voting", "import", "sync", "training")


def herdbook(*args, home: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*HERDBOOK, *map(str, args), "--home", str(home)], capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"herdbook {' '.join(map(str, args))} failed: {done.stdout}{done.stderr}")
    return done


def draw_images(folder: Path, count: int, first_seed: int, rater_column: bool = False) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        seed = first_seed + n
        rng = random.Random(seed)
        image = Image.new("RGB", (48, 48), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(40), rng.randrange(40)
            draw.rectangle([x, y, x + rng.randrange(4, 20), y + rng.randrange(4, 20)],
                           fill=tuple(rng.randrange(256) for _ in range(3)))  # fmt: skip
        name = f"img-{seed}.png"
        image.save(folder / name)
        row = {"file": name, "prompt": f"an ox, look {seed % 7}"}
        if rater_column:
            row["rating"] = "good" if seed % 3 else "bad"
        rows.append(row)
    table = folder / "prompts.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


def make_home(root: Path, images: int) -> Path:
    from herdbook.training.tiny import RESOLUTION, save_tiny_pipeline

    from herdbook.config import ProjectConfig
    from herdbook.home import init_home

    model = save_tiny_pipeline(root / "tiny-model")
    config = ProjectConfig(base_model=str(model), resolution=RESOLUTION, reference_prompts=[])
    config = config.with_changes(
        training=config.training.with_changes(steps=40, checkpoint_every=4),
        jobs=config.jobs.with_changes(stale_after_seconds=2),
    )
    home = init_home(root / "home", config).root
    table = draw_images(root / "start", images, first_seed=0)
    herdbook("import", root / "start", "--prompts", table, home=home)
    return home


# --- one rater voting through the app's services, logging each try and each acknowledgement ---


def vote_loop(home: Path, rater: str, count: int, log: Path, seed: int) -> None:
    from herdbook.db.access import Actor
    from herdbook.db.errors import StoreBusy

    from herdbook import actions
    from herdbook.home import load_home

    store = load_home(home).open_store()
    with store.transaction() as session:
        from herdbook.db.models import Candidate
        from sqlalchemy import select

        ids = session.scalars(select(Candidate.id)).all()
    actor = Actor(rater, "rater", signed_in=True)
    rng = random.Random(seed)
    with log.open("a", buffering=1) as out:  # line-buffered: an acknowledgement is on disk before the next try
        for _ in range(count):
            cid, value = rng.choice(ids), rng.choice(("accept", "reject", "skip"))
            out.write(f"try {cid} {value}\n")
            while True:
                try:
                    store.write(lambda session, c=cid, v=value: actions.vote(session, actor, c, v))
                    break
                except StoreBusy:  # the app keeps the vote and sends it again; so does this rater
                    out.write("busy\n")
            out.write("ok\n")
    store.close()


def acknowledged(log: Path) -> dict[int, tuple[str | None, set[str]]]:
    """Per candidate: the last acknowledged value (None if no vote on it was acknowledged), and
    the values tried after it without an acknowledgement (stored or not as the kill fell)."""
    seen: dict[int, tuple[str | None, set[str]]] = {}
    pending: tuple[int, str] | None = None
    if not log.exists():  # killed before its first try: nothing was acknowledged
        return seen
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["try"]:
            pending = (int(parts[1]), parts[2])
            acked, maybe = seen.get(pending[0], (None, set()))
            seen[pending[0]] = (acked, maybe | {pending[1]})
        elif parts == ["ok"] and pending:
            seen[pending[0]] = (pending[1], set())  # stored for sure; what came before is history
            pending = None
    return seen


def kept(stored: str | None, acked: str | None, maybe: set[str]) -> bool:
    """Whether the stored vote is one the rater may have: the acknowledged one or a later try;
    with nothing acknowledged, also none at all."""
    return stored in maybe or stored == acked


def acked_count(log: Path) -> int:
    return log.read_text().count("ok\n") if log.exists() else 0


def current_votes(home: Path) -> tuple[dict[tuple[str, int], str], int]:
    """(rater, candidate) -> current value, and how many pairs have more than one current vote."""
    from herdbook.db.models import Rater, Vote
    from sqlalchemy import func, select

    from herdbook.home import load_home

    store = load_home(home).open_store()
    with store.transaction() as session:
        rows = session.execute(
            select(Rater.name, Vote.candidate_id, Vote.value).join(Rater).where(Vote.is_current)
        ).all()
        doubled = session.scalar(
            select(func.count()).select_from(
                select(Vote.rater_id, Vote.candidate_id)
                .where(Vote.is_current)
                .group_by(Vote.rater_id, Vote.candidate_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    store.close()
    return {(name, cid): str(value.value if hasattr(value, "value") else value) for name, cid, value in rows}, doubled


def lost_votes(home: Path, logs: dict[str, Path]) -> int:
    votes, _ = current_votes(home)
    lost = 0
    for rater, log in logs.items():
        for cid, (acked, maybe) in acknowledged(log).items():
            lost += not kept(votes.get((rater, cid)), acked, maybe)
    return lost


def voter(home: Path, rater: str, count: int, log: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "vote", str(home), rater, str(count), str(log), str(seed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# --- the trials ------------------------------------------------------------------------------


def load_trial(home: Path, work: Path, size: dict) -> dict:
    per_rater = size["votes"] // size["raters"]
    logs = {f"rater-{n}": work / f"load-{n}.log" for n in range(size["raters"])}
    started = time.monotonic()
    processes = [voter(home, rater, per_rater, log, seed) for seed, (rater, log) in enumerate(logs.items())]
    rng = random.Random(7)
    cli_acked: dict[tuple[str, int], str] = {}
    cli_refused: list[str] = []
    cli_acknowledged = 0
    for n in range(size["cli_votes"]):  # `herdbook vote` processes beside the raters
        rater, cid, value = f"cli-{n % 2}", rng.randrange(1, size["images"] + 1), rng.choice(("accept", "reject"))
        done = herdbook("vote", cid, value, "--rater", rater, home=home, check=False)
        if done.returncode == 0:
            cli_acked[(rater, cid)] = value  # the last acknowledged vote on each image counts
            cli_acknowledged += 1
        else:  # told, so not lost; but say why
            cli_refused.append((done.stdout + done.stderr).strip().splitlines()[-1][:200])
    for process in processes:
        process.wait()
    seconds = time.monotonic() - started
    votes, doubled = current_votes(home)
    lost = lost_votes(home, logs) + sum(votes.get(key) != value for key, value in cli_acked.items())
    attempted = per_rater * size["raters"] + size["cli_votes"]
    stored = sum(acked_count(log) for log in logs.values()) + cli_acknowledged
    busy = sum(log.read_text().count("busy") for log in logs.values())
    return {"attempted": attempted, "acknowledged": stored, "lost": lost, "doubled": doubled,
            "retried_busy": busy, "seconds": round(seconds, 1), "cli_refused": cli_refused,
            "failed_processes": sum(p.returncode != 0 for p in processes)}  # fmt: skip


def kill_when(command: list[str], event, rng: random.Random, low: float, high: float) -> bool:
    """Start ``command``, wait for ``event()`` (its work has begun: a row committed, a checkpoint
    written), then kill -9 it after a random moment. True when it was killed while still
    working; a process that ended first, or never got to the event, is not a kill."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return kill_process_when(process, event, rng, low, high)


def kill_process_when(process: subprocess.Popen, event, rng: random.Random, low: float, high: float) -> bool:
    deadline = time.monotonic() + 300
    while not event():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            return False
        time.sleep(0.02)
    time.sleep(rng.uniform(low, high))
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return killed


def count_rows(home: Path, table: str) -> int:
    """Committed rows, read without herdbook (a plain read-only SQLite connection)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{home / 'herdbook.db'}?mode=ro", uri=True, timeout=30)) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def newest_change(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0)


def rounds_of(home: Path) -> list[dict]:
    return json.loads(herdbook("rounds", "--json", home=home).stdout)


def kill_trials(home: Path, work: Path, size: dict) -> dict:
    """kill -9 once each kind of work has begun. Then: doctor says what the kill left, the next
    sync works and repairs it, doctor finds nothing, a second sync finds nothing new (the
    committed tables are what the database holds), and an interrupted round resumes and finishes."""
    rng = random.Random(11)
    dataset = home / "dataset"
    found: dict = {"kills": defaultdict(int), "missed": defaultdict(int), "doctor_failed": 0, "sync_failed": 0,
                   "lost_votes": 0, "import_incomplete": 0, "dataset_differs": 0, "rounds_resumed": 0,
                   "rounds_unfinished": 0, "doctor_findings_before_sync": []}  # fmt: skip
    for n in range(size["kills"]):
        kind = KINDS[n % len(KINDS)]
        if kind == "voting":
            log = work / f"kill-vote-{n}.log"
            process = voter(home, f"killed-{n}", 100_000, log, seed=1000 + n)
            killed = kill_process_when(process, lambda log=log: acked_count(log) > 0, rng, 0.2, 1.5)
            found["lost_votes"] += lost_votes(home, {f"killed-{n}": log})
        elif kind == "import":
            folder = work / f"import-{n}"
            table = draw_images(folder, 120, first_seed=100_000 + n * 1000, rater_column=True)
            command = [*HERDBOOK, "import", str(folder), "--prompts", str(table), "--rater", f"importer-{n}",
                       "--home", str(home)]  # fmt: skip
            before = count_rows(home, "candidates")
            killed = kill_when(command, lambda before=before: count_rows(home, "candidates") > before, rng, 0.0, 0.2)
            herdbook("import", folder, "--prompts", table, "--rater", f"importer-{n}", home=home, check=False)
            votes, _ = current_votes(home)
            found["import_incomplete"] += 120 - sum(1 for (rater, _) in votes if rater == f"importer-{n}")
        elif kind == "sync":
            for _ in range(3):  # something new to commit
                herdbook("vote", rng.randrange(1, size["images"] + 1), "accept", "--rater", f"syncer-{n}", home=home)
            since = newest_change(dataset)
            command = [*HERDBOOK, "sync", "--home", str(home)]
            killed = kill_when(command, lambda since=since: newest_change(dataset) > since, rng, 0.0, 0.3)
        else:  # training
            before = {r["id"] for r in rounds_of(home)}

            def stepping(before=before) -> bool:
                folders = sorted((home / "rounds").glob("round-*/checkpoint/latest.pt"))
                return any(int(f.parts[-3].split("-")[1]) not in before for f in folders)

            killed = kill_when([*HERDBOOK, "train", "--home", str(home)], stepping, rng, 0.0, 1.0)
            killed = killed and rounds_of(home)[-1]["status"] != "finished"  # killed on its way out: not a kill
        found["kills" if killed else "missed"][kind] += 1
        first_look = herdbook("doctor", home=home, check=False)
        if first_look.returncode != 0:
            found["doctor_findings_before_sync"].append(kind + ": " + " / ".join(
                line.strip() for line in first_look.stdout.splitlines() if line.startswith("NO")))  # fmt: skip
        if herdbook("sync", home=home, check=False).returncode != 0:
            found["sync_failed"] += 1
        after_sync = herdbook("doctor", home=home, check=False)
        if after_sync.returncode != 0:
            found["doctor_failed"] += 1
            print(after_sync.stdout, file=sys.stderr)
        if "Nothing new to commit" not in herdbook("sync", home=home, check=False).stdout:
            found["dataset_differs"] += 1  # the committed train.csv is not what the database holds
        wait_until_stale(home)
        for row in rounds_of(home):
            if row["status"] in ("interrupted", "running", "pending"):
                found["rounds_resumed"] += 1
                herdbook("rounds", "resume", row["id"], home=home, check=False)
        found["rounds_unfinished"] += sum(r["status"] != "finished" for r in rounds_of(home))
    found["kills"], found["missed"] = dict(found["kills"]), dict(found["missed"])
    return found


def wait_until_stale(home: Path) -> None:
    """Until no round counts as running: a killed round's heartbeat goes stale (2 s here)."""
    deadline = time.monotonic() + 60
    while any(r["status"] == "running" for r in rounds_of(home)) and time.monotonic() < deadline:
        time.sleep(0.2)


def hostile_trial(home: Path, work: Path) -> dict:
    from PIL import Image

    folder = work / "hostile"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "good.png")
    files = {
        "empty.png": b"",
        "text.png": b"I am not a picture",
        "vector.png": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>',
        "html.jpg": b"<html><script>alert(1)</script></html>",
        "zip.png": b"PK\x03\x04" + bytes(100),
        "truncated.png": (folder / "good.png").read_bytes()[:60],
        "bad\nname.png": b"x",
        "esc\x1b[2J.png": b"x",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    Image.new("L", (12_000, 12_000)).save(folder / "bomb.png", optimize=True)  # 144 megapixels
    os.mkfifo(folder / "fifo.png")
    (folder / "link.png").symlink_to("/etc/passwd")
    rows = [{"file": p.name, "prompt": "an ox", "seed": "7", "rating": "good"} for p in sorted(folder.iterdir())]
    rows += [
        {"file": "../outside.png", "prompt": "an ox", "seed": "", "rating": "good"},
        {"file": "good.png", "prompt": "=cmd|' /C calc'!A0", "seed": "100000000000000000000", "rating": "bad"},
    ]
    hostile = [row["file"] for row in rows if row["file"] != "good.png"]
    table = work / "hostile.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "prompt", "seed", "rating"])
        writer.writeheader()
        writer.writerows(rows)
    before, _ = current_votes(home)
    candidates_before = len(json.loads(herdbook("candidates", "--json", home=home).stdout))
    done = herdbook("import", folder, "--prompts", table, "--rater", "hostile", home=home, check=False, timeout=120)
    after = len(json.loads(herdbook("candidates", "--json", home=home).stdout))
    output = done.stdout + done.stderr
    votes_after, _ = current_votes(home)
    new_votes = {key: value for key, value in votes_after.items() if key not in before}
    return {"files": len(hostile), "exit_status": done.returncode, "unnamed": unnamed_refusals(hostile, output),
            "imported": after - candidates_before, "raw_escape_in_output": "\x1b" in output,
            "votes_changed": any(votes_after.get(key) != value for key, value in before.items()),
            "new_votes": len(new_votes), "traceback": "Traceback" in output}  # fmt: skip


def unnamed_refusals(names: list[str], output: str) -> list[str]:
    """The hostile files with no 'skipped NAME: reason' line of their own in the import's output."""
    from herdbook.cli import printable

    lines = output.splitlines()
    return [name for name in names if not any(line.startswith(f"skipped {printable(name)}: ") for line in lines)]


# --- sign-in: the raters are users; an attacker's tab was open before sign-in was turned on ---

ATTACKER = "mallory"


def turn_sign_in_on(home: Path, size: dict) -> None:
    """Every rater the trials run becomes a user (a rater may vote only as a signed-in user)."""
    from herdbook.db.access import add_user

    from herdbook.home import load_home

    names = [f"rater-{n}" for n in range(size["raters"])] + [f"killed-{n}" for n in range(size["kills"])]
    store = load_home(home).open_store()
    with store.transaction() as session:
        add_user(session, "boss", "admin", "the boss's password")
        for name in names:
            add_user(session, name, "rater", f"{name}'s password")
    store.close()


def attacker_trial(home: Path, open_tab) -> dict:
    """What a tab opened while the app was open (no users) can still do once sign-in is on, and
    what a removed admin's tab can do: every action is to be refused. Then 25 password guesses
    at the admin from one address: how many are checked, and whether the right one then gets in."""
    from herdbook.db.access import Actor, add_user, remove_user, sign_in
    from herdbook.db.errors import HerdbookError

    from herdbook import actions
    from herdbook.home import load_home

    loaded = load_home(home)
    store = loaded.open_store()
    with store.transaction() as session:
        add_user(session, "temp", "admin", "temp's password")
    with store.transaction() as session:
        remove_user(session, "temp")
    removed_admin = Actor("temp", "admin", signed_in=True)
    attempts = [
        lambda s, a: actions.vote(s, a, 1, "reject"),
        lambda s, a: actions.undo(s, a),
        lambda s, a: actions.sync_dataset(s, a, loaded),
        lambda s, a: actions.start_round(s, a, loaded, steps=1),
        lambda s, a: actions.cancel_round(s, a, loaded, 1),
        lambda s, a: actions.delete_round(s, a, loaded, 1),
        lambda s, a: actions.change_base_model(s, a, loaded, "attacker/model"),
    ]
    got_through = []
    for actor in (open_tab, removed_admin):
        for n, attempt in enumerate(attempts):
            try:
                with store.transaction() as session:
                    attempt(session, actor)
                got_through.append(f"{actor.name}: action {n}")
            except HerdbookError:
                pass
    checked, refused = 0, 0
    for _ in range(25):
        try:
            with store.transaction() as session:
                sign_in(session, "boss", "a guess", client="203.0.113.9")
            checked += 1
        except HerdbookError:
            refused += 1
    try:
        with store.transaction() as session:
            right_got_in = sign_in(session, "boss", "the boss's password", client="203.0.113.9") is not None
    except HerdbookError:
        right_got_in = False
    with store.transaction() as session:
        from herdbook.db.access import recent_actions

        logged = sum(a.action == "failed sign-in" for a in recent_actions(session, 200))
    store.close()
    return {"actions_tried": 2 * len(attempts), "got_through": got_through, "guesses_checked": checked,
            "guesses_refused": refused, "right_password_got_in_after": right_got_in, "failures_logged": logged}  # fmt: skip


def inconsistencies(load: dict, kills: dict, hostile: dict, attacker: dict | None = None) -> int:
    """Everything the trials found wrong, counted: each is a loss, a double, a refusal nobody
    was told of, a home left in a state the next command cannot use, or an attacker's way in."""
    attacker = attacker or {"got_through": [], "guesses_checked": 0, "right_password_got_in_after": False}
    return (
        len(attacker["got_through"]) + (attacker["guesses_checked"] > 10) + attacker["right_password_got_in_after"] +
        load["lost"] + load["doubled"] + load["failed_processes"] + len(load["cli_refused"])
        + kills["doctor_failed"] + kills["sync_failed"] + kills["dataset_differs"]
        + kills["lost_votes"] + kills["import_incomplete"] + kills["rounds_unfinished"]
        + (hostile["imported"] != 1) + (hostile["new_votes"] != 1) + hostile["traceback"]
        + hostile["raw_escape_in_output"] + hostile["votes_changed"] + len(hostile["unnamed"])
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the small trials CI runs")
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    size = SHORT if args.short else LONG
    work = args.keep or Path(tempfile.mkdtemp(prefix="herdbook-trials-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OXEN_CONFIG_DIR", str(work / "oxen-config"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # as the CLI does
    started = time.monotonic()
    home = make_home(work, size["images"])
    from herdbook.db.access import Actor

    open_tab = Actor(ATTACKER, "admin")  # the open app's visitor, named by ?rater=, from before sign-in
    turn_sign_in_on(home, size)
    load = load_trial(home, work, size)
    kills = kill_trials(home, work, size)
    hostile = hostile_trial(home, work)
    attacker = attacker_trial(home, open_tab)
    lines = [
        f"herdbook trials ({'short' if args.short else 'long'}), {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores, {time.monotonic() - started:.0f} s in all",
        "",
        f"load: {size['raters']} raters in separate processes through the app's services + `herdbook vote` processes",
        f"  votes attempted {load['attempted']}, acknowledged {load['acknowledged']}, lost {load['lost']}, "
        f"doubled {load['doubled']}; busy retries {load['retried_busy']}; {load['seconds']} s; "
        f"processes failed {load['failed_processes']}; `herdbook vote` refused {len(load['cli_refused'])}",
        *(f"    {line}" for line in load["cli_refused"][:5]),
        f"kill -9: {sum(kills['kills'].values())} processes killed while working "
        f"({', '.join(f'{k} {v}' for k, v in kills['kills'].items())}); "
        f"{sum(kills['missed'].values())} ended before the kill ({', '.join(f'{k} {v}' for k, v in kills['missed'].items()) or 'none'})",
        f"  doctor's findings right after a kill (each repaired by the next sync): "
        f"{len(kills['doctor_findings_before_sync'])}",
        *(f"    {finding}" for finding in kills["doctor_findings_before_sync"]),
        f"  after each kill and the next sync: doctor failed {kills['doctor_failed']}, the sync failed "
        f"{kills['sync_failed']}; "
        f"acknowledged votes lost {kills['lost_votes']}; images missing after an import was run again "
        f"{kills['import_incomplete']}; committed dataset differing from the database {kills['dataset_differs']}; "
        f"rounds resumed {kills['rounds_resumed']}, left unfinished {kills['rounds_unfinished']}",
        f"hostile files: {hostile['files']} hostile entries, {hostile['files'] - len(hostile['unnamed'])} refused "
        f"by name, imported {hostile['imported']} (the one good image) with {hostile['new_votes']} vote, "
        f"exit status {hostile['exit_status']}, "
        f"tracebacks {hostile['traceback']}, raw escapes echoed {hostile['raw_escape_in_output']}, "
        f"earlier votes changed {hostile['votes_changed']}",
        f"sign-in on (the raters are users): a tab open from before sign-in and a removed admin's tab tried "
        f"{attacker['actions_tried']} actions, {len(attacker['got_through'])} got through; 25 password guesses from "
        f"one address: {attacker['guesses_checked']} checked, {attacker['guesses_refused']} held back unchecked, "
        f"{attacker['failures_logged']} failed sign-ins in the log, the right password let in after them: "
        f"{attacker['right_password_got_in_after']}",
    ]
    problems = inconsistencies(load, kills, hostile, attacker)
    lines += ["", f"inconsistencies: {problems}"]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["vote"]:
        home, rater, count, log, seed = sys.argv[2:7]
        vote_loop(Path(home), rater, int(count), Path(log), int(seed))
    else:
        sys.exit(main())
