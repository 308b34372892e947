"""Rate page latency: key press to the next image shown, in a real browser.

Builds a home with 50,000 candidates and 200,000 votes (10 raters), starts the app, and has
Playwright drive Debian's chromium as a new rater pressing 1 (accept) and 2 (reject). The time
is taken inside the page: from the keydown event to the `load` event of the next image
element. The same is measured on bench/bare_fragment_app.py, a bare fragment with one image
and two shortcut buttons, as Streamlit's own floor: with herdbook's flags, and with Streamlit's
defaults (which force a full garbage collection after every run; herdbook turns that off).

    .venv/bin/python bench/rate_latency.py [--presses 100] [--candidates 50000]

Target (issue 3): p95 under 150 ms. Output of the reported run: bench/rate_latency.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "oxen-demo"
N_CANDIDATES, N_RATERS, VOTES_PER_RATER = 50_000, 10, 20_000
UNIQUE = 400  # the first candidates get their own files, so the browser never shows a cached image

LISTEN = """
() => {
  window.__lat = [];
  window.addEventListener('keydown', () => { window.__t0 = performance.now(); }, true);
  const done = () => { if (window.__t0) { window.__lat.push(performance.now() - window.__t0); window.__t0 = 0; } };
  const check = () => {
    document.querySelectorAll('[data-testid="stImage"] img, [data-testid="stFullScreenFrame"] img').forEach(img => {
      if (img.__shown === img.src) return;  // new element, or the same element with a new picture
      img.__shown = img.src;
      if (img.complete && img.naturalWidth) done(); else img.addEventListener('load', done, { once: true });
    });
  };
  document.querySelectorAll('img').forEach(img => { img.__shown = img.src; });
  new MutationObserver(check).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['src'] });
}
"""


def source_images() -> list[Image.Image]:
    paths = sorted(SHARED.glob("*/*.jpg")) if SHARED.is_dir() else []
    if paths:
        return [Image.open(p).convert("RGB").resize((512, 512)) for p in paths]
    from herdbook.demo import demo_looks, draw_ox

    return [draw_ox(look, seed, 512) for seed, look in enumerate(demo_looks())]


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = source_images()
    paths = []
    for i in range(count):
        image = sources[i % len(sources)].copy()
        ImageDraw.Draw(image).text((10, 490), f"candidate {i + 1}", fill=(255, 0, 0))
        path = folder / f"c{i:05d}.jpg"
        image.save(path, quality=88)
        paths.append(path)
    return paths


def build_home(root: Path) -> Path:
    from herdbook.db.models import Candidate, Rater, Vote, VoteValue
    from sqlalchemy import insert

    from herdbook.home import init_home

    home = init_home(root)
    files = write_images(home.candidates_dir / "bench", UNIQUE)
    rng = random.Random(0)
    prompts = [f"prompt {i}" for i in range(50)]
    store = home.open_store()
    with store.transaction() as session:
        session.execute(
            insert(Candidate),
            [
                {
                    "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                    "path": str(files[i % UNIQUE].relative_to(home.root)),
                    "source_name": f"c{i:05d}.jpg",
                    "prompt": prompts[i % len(prompts)],
                    "negative_prompt": "",
                    "generation": {},
                    "extra": {},
                    "width": 512,
                    "height": 512,
                }
                for i in range(N_CANDIDATES)
            ],
        )
        session.execute(insert(Rater), [{"name": f"rater-{r}"} for r in range(N_RATERS)])
        votes = []
        for rater in range(1, N_RATERS + 1):
            for cid in rng.sample(range(1, N_CANDIDATES + 1), VOTES_PER_RATER):
                votes.append(
                    {
                        "candidate_id": cid,
                        "rater_id": rater,
                        "value": rng.choice([VoteValue.accept, VoteValue.reject]),
                        "is_current": True,
                    }
                )
        session.execute(insert(Vote), votes)
    store.close()
    return home.root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], env: dict, port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("app did not start")


def measure(url: str, presses: int, warmup: int = 10, pause: float = 0.3) -> list[float]:
    from playwright.sync_api import sync_playwright

    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=flags
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_text(re.compile(r"#\d+ ·")).wait_for(timeout=60_000)  # the first card, whichever it is
        page.wait_for_timeout(1000)  # Streamlit binds shortcuts just after the first render
        page.evaluate(LISTEN)
        for i in range(warmup + presses):
            page.keyboard.press("1" if i % 2 else "2")
            page.wait_for_function(f"window.__lat.length >= {i + 1}", timeout=30_000)
            time.sleep(pause)  # a brisk rater's pace; work queued behind a press would show here
        latencies = page.evaluate("window.__lat")[warmup:]
        browser.close()
    return latencies


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[round(0.95 * (len(ordered) - 1))]
    return f"{name:<34} {len(values):>7} {statistics.median(values):>8.1f} {p95:>8.1f} {max(values):>8.1f}"


def main() -> None:
    global N_CANDIDATES, VOTES_PER_RATER, UNIQUE  # build_home reads them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=N_CANDIDATES, help="Project size (4 votes per candidate).")
    parser.add_argument(
        "--baseline", type=Path, default=ROOT / "bench" / "bare_fragment_app.py", help="The app to compare with."
    )
    args = parser.parse_args()
    N_CANDIDATES, VOTES_PER_RATER = args.candidates, args.candidates * 4 // N_RATERS
    if N_CANDIDATES <= 2000:  # a small project's queue may show any of them: each gets its own file
        UNIQUE = N_CANDIDATES
    from herdbook.serve import APP, app_command

    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("OXEN_CONFIG_DIR", str(Path(scratch) / "oxen-config"))
        started = time.perf_counter()
        home = build_home(Path(scratch) / "home")
        print(
            f"home with {N_CANDIDATES:,} candidates and {N_RATERS * VOTES_PER_RATER:,} votes built in {time.perf_counter() - started:.0f} s"
        )
        results = {}
        port = free_port()
        app = start(app_command(port, "127.0.0.1"), {"HERDBOOK_HOME": str(home)}, port)
        try:
            results["herdbook Rate page"] = measure(f"http://127.0.0.1:{port}/?rater=bench", args.presses)
            print(summary("herdbook Rate page", results["herdbook Rate page"]), flush=True)
        finally:
            app.terminate()
            app.wait()
        for label, gc_after_runs in [("bare fragment, same flags", False), ("bare fragment, Streamlit defaults", True)]:
            port = free_port()
            bare = app_command(port, "127.0.0.1")
            bare[bare.index(str(APP))] = str(args.baseline)
            if gc_after_runs:  # Streamlit's default: a full garbage collection after every run
                flag = bare.index("--runner.postScriptGC")
                del bare[flag : flag + 2]
            app = start(bare, {"BENCH_IMAGES": str(home / "candidates" / "bench")}, port)
            try:
                results[label] = measure(f"http://127.0.0.1:{port}/", args.presses)
            finally:
                app.terminate()
                app.wait()
    print(f"key press -> next image loaded, ms; {os.cpu_count()} cores, headless chromium")
    print(f"{'app':<34} {'presses':>7} {'p50':>8} {'p95':>8} {'max':>8}")
    for name, values in results.items():
        print(summary(name, values))


if __name__ == "__main__":
    main()
