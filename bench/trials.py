"""Load and crash trials: what a team's judgement survives.

    python bench/trials.py                # the long trials (minutes): 8 raters, 10,000 votes, 52 kill -9
    python bench/trials.py --short        # the same trials, small: CI runs this (tests/test_trials.py)

1. Load: 8 raters vote at once, each in its own process through the services the app calls
   (`herdbook.actions.vote` in one `Store.write`), while `herdbook vote` processes vote beside
   them. Every acknowledged vote must be the rater's current vote (or replaced by a later one
   of theirs); no rater has two current votes on one image.
2. kill -9 at random moments, rotating through voting, import, sync and training. After each:
   `herdbook doctor` (integrity, files, Oxen repository, versions recorded) must pass, the next
   `herdbook sync` must work, an interrupted round must resume and finish, and what was
   acknowledged before the kill must be there (votes; an import run again completes it once).
3. Hostile files: each refused by name with a reason, the good one imported, nothing else stored.

Prints what it found; exit status 1 on any loss or inconsistency. bench/trials.txt holds a run.
"""

from __future__ import annotations

import argparse
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
    return log.read_text().count("ok\n")


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


def kill_at_random(command: list[str], rng: random.Random, low: float, high: float, ready=None) -> float:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    if ready is not None:  # e.g. training: kill only once it has begun stepping
        while not ready() and process.poll() is None and time.monotonic() - started < 120:
            time.sleep(0.05)
    time.sleep(rng.uniform(low, high))
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return time.monotonic() - started


def rounds_of(home: Path) -> list[dict]:
    return json.loads(herdbook("rounds", "--json", home=home).stdout)


def kill_trials(home: Path, work: Path, size: dict) -> dict:
    rng = random.Random(11)
    found: dict = {"kills": defaultdict(int), "doctor_failed": 0, "sync_failed": 0, "lost_votes": 0,
                   "import_incomplete": 0, "rounds_resumed": 0, "rounds_unfinished": 0, "doctor_findings_before_sync": []}  # fmt: skip
    for n in range(size["kills"]):
        kind = KINDS[n % len(KINDS)]
        if kind == "voting":
            log = work / f"kill-vote-{n}.log"
            process = voter(home, f"killed-{n}", 100_000, log, seed=1000 + n)
            time.sleep(rng.uniform(0.8, 2.5))
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            found["lost_votes"] += lost_votes(home, {f"killed-{n}": log})
        elif kind == "import":
            folder = work / f"import-{n}"
            table = draw_images(folder, 120, first_seed=100_000 + n * 1000, rater_column=True)
            command = [*HERDBOOK, "import", str(folder), "--prompts", str(table), "--rater", f"importer-{n}",
                       "--home", str(home)]  # fmt: skip
            kill_at_random(command, rng, 0.5, 3.0)
            herdbook("import", folder, "--prompts", table, "--rater", f"importer-{n}", home=home, check=False)
            votes, _ = current_votes(home)
            found["import_incomplete"] += 120 - sum(1 for (rater, _) in votes if rater == f"importer-{n}")
        elif kind == "sync":
            for _ in range(3):  # something new to commit
                herdbook("vote", rng.randrange(1, size["images"] + 1), "accept", "--rater", f"syncer-{n}", home=home)
            kill_at_random([*HERDBOOK, "sync", "--home", str(home)], rng, 0.2, 2.5)
        else:  # training
            before = {r["id"] for r in rounds_of(home)}

            def stepping(before=before) -> bool:
                folders = sorted((home / "rounds").glob("round-*/checkpoint/latest.pt"))
                return any(int(f.parts[-3].split("-")[1]) not in before for f in folders)

            kill_at_random([*HERDBOOK, "train", "--home", str(home)], rng, 0.0, 3.0, ready=stepping)
        found["kills"][kind] += 1
        # after every kill: doctor says what a kill left (a sync killed after its Oxen commit
        # leaves that commit unrecorded: doctor says "run herdbook sync"); the next sync works
        # and repairs it; then doctor must find nothing, and an interrupted round finishes
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
        time.sleep(2.2)  # a killed round's heartbeat goes stale
        for row in rounds_of(home):
            if row["status"] in ("interrupted", "running", "pending"):
                found["rounds_resumed"] += 1
                herdbook("rounds", "resume", row["id"], home=home, check=False)
        found["rounds_unfinished"] += sum(r["status"] != "finished" for r in rounds_of(home))
    found["kills"] = dict(found["kills"])
    return found


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
    rows = [{"file": p.name, "prompt": "an ox", "seed": "7"} for p in sorted(folder.iterdir())]
    rows += [
        {"file": "../outside.png", "prompt": "an ox", "seed": ""},
        {"file": "good.png", "prompt": "=cmd|' /C calc'!A0", "seed": "100000000000000000000"},
    ]
    hostile_names = len(rows) - 1  # all but good.png's first row
    table = work / "hostile.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "prompt", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    before, _ = current_votes(home)
    candidates_before = len(json.loads(herdbook("candidates", "--json", home=home).stdout))
    done = herdbook("import", folder, "--prompts", table, home=home, check=False, timeout=120)
    after = len(json.loads(herdbook("candidates", "--json", home=home).stdout))
    output = done.stdout + done.stderr
    named = sum(1 for line in output.splitlines() if line.startswith(("  ", "skipped", "error", "warning")))
    return {"files": hostile_names, "exit_status": done.returncode, "refusal_lines": named,
            "imported": after - candidates_before, "raw_escape_in_output": "\x1b" in output,
            "votes_changed": current_votes(home)[0] != before, "traceback": "Traceback" in output}  # fmt: skip


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
    started = time.monotonic()
    home = make_home(work, size["images"])
    load = load_trial(home, work, size)
    kills = kill_trials(home, work, size)
    hostile = hostile_trial(home, work)
    lines = [
        f"herdbook trials ({'short' if args.short else 'long'}), {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores, {time.monotonic() - started:.0f} s in all",
        "",
        f"load: {size['raters']} raters in separate processes through the app's services + `herdbook vote` processes",
        f"  votes attempted {load['attempted']}, acknowledged {load['acknowledged']}, lost {load['lost']}, "
        f"doubled {load['doubled']}; busy retries {load['retried_busy']}; {load['seconds']} s; "
        f"processes failed {load['failed_processes']}; `herdbook vote` refused {len(load['cli_refused'])}",
        *(f"    {line}" for line in load["cli_refused"][:5]),
        f"kill -9: {sum(kills['kills'].values())} kills ({', '.join(f'{k} {v}' for k, v in kills['kills'].items())})",
        f"  doctor's findings right after a kill (each repaired by the next sync): "
        f"{len(kills['doctor_findings_before_sync'])}",
        *(f"    {finding}" for finding in kills["doctor_findings_before_sync"]),
        f"  after each kill and the next sync: doctor failed {kills['doctor_failed']}, the sync failed "
        f"{kills['sync_failed']}; "
        f"acknowledged votes lost {kills['lost_votes']}; images missing after an import was run again "
        f"{kills['import_incomplete']}; rounds resumed {kills['rounds_resumed']}, left unfinished "
        f"{kills['rounds_unfinished']}",
        f"hostile files: {hostile['files']} hostile entries, {hostile['refusal_lines']} refusal lines, "
        f"imported {hostile['imported']} (the one good image), exit status {hostile['exit_status']}, "
        f"tracebacks {hostile['traceback']}, raw escapes echoed {hostile['raw_escape_in_output']}, "
        f"earlier votes changed {hostile['votes_changed']}",
    ]
    problems = (
        load["lost"] + load["doubled"] + load["failed_processes"] + len(load["cli_refused"])
        + kills["doctor_failed"] + kills["sync_failed"]
        + kills["lost_votes"] + kills["import_incomplete"] + kills["rounds_unfinished"]
        + (hostile["imported"] != 1) + hostile["traceback"] + hostile["raw_escape_in_output"] + hostile["votes_changed"]
        + (hostile["refusal_lines"] < hostile["files"] - 1)
    )  # fmt: skip
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
