"""Sync speed: 1,000 new 512x512 images, then a sync with nothing new.

Targets (issue 4): under 20 s and under 2 s on the 2-core development machine.
Run:  .venv/bin/python bench/sync_speed.py   (prints a table; results in bench/sync_speed.txt)
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

from herdbook.feedback.curation import sync
from herdbook.feedback.ingest import ImportRow, import_images
from herdbook.feedback.votes import cast_vote
from PIL import Image

from herdbook.home import init_home

N = int(os.environ.get("N_IMAGES", 1000))


def make_images(folder: Path, n: int) -> list[ImportRow]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        # noise over a gradient: realistic JPEG sizes (~40-60 KB) and distinct perceptual hashes
        base = Image.linear_gradient("L").resize((512, 512)).rotate(rng.uniform(0, 360)).convert("RGB")
        noise = Image.effect_noise((512, 512), rng.uniform(20, 60)).convert("RGB")
        Image.blend(base, noise, 0.5).save(folder / f"{i:04d}.jpg", quality=90)
        rows.append(ImportRow(f"{i:04d}.jpg", prompt=f"prompt {i % 10}"))
    return rows


def make_rated_home(scratch: Path, n: int):
    """A home of ``n`` imported images, each voted on once (two in three accepted)."""
    folder = scratch / "images"
    folder.mkdir()
    rows = make_images(folder, n)
    home = init_home(scratch / "home")
    store = home.open_store()
    with store.transaction() as session:
        import_images(session, folder, home.candidates_dir, home.root, rows)
    with store.transaction() as session:
        for cid in range(1, n + 1):
            cast_vote(session, cid, "ann", "accept" if cid % 3 else "reject")
    store.close()
    return home


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.environ.setdefault("OXEN_CONFIG_DIR", str(scratch / "oxen-config"))
        home = make_rated_home(scratch, N)
        store = home.open_store()
        timings = {}
        for label in ("first sync, all new", "sync with nothing new"):
            start = time.perf_counter()
            with store.transaction() as session:
                result = sync(session, home.dataset_repo, home.root, home.config.selection)
            timings[label] = (time.perf_counter() - start, result.version is not None)
        size = sum(p.stat().st_size for p in (scratch / "images").iterdir()) / 1e6
    print(f"{N} images of 512x512 ({size:.0f} MB of JPEG), {os.cpu_count()} cores")
    print(f"{'case':<24} {'seconds':>8}  committed")
    for label, (seconds, committed) in timings.items():
        print(f"{label:<24} {seconds:>8.2f}  {committed}")


if __name__ == "__main__":
    main()
