"""What one rating-queue load costs on a large project, one vote each and with raters weighed:
``queue_view`` (what the Rate page and `herdbook queue` call) and the selection's settledness,
on the home bench/rate_latency.py builds (50,000 candidates, 200,000 votes, 10 raters).

    .venv/bin/python -m bench.queue_load
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from herdbook.feedback.selection import SelectionPolicy
from herdbook.feedback.votes import queue_view, selection_settledness

from herdbook.home import load_home

sys.path.insert(0, str(Path(__file__).parent))
import rate_latency


def main() -> None:
    home = load_home(rate_latency.build_home(Path(tempfile.mkdtemp())))
    store = home.open_store()
    for weigh in (False, True):
        policy = SelectionPolicy(weigh_raters=weigh)
        loads = []
        for _ in range(3):
            began = time.perf_counter()
            with store.transaction() as session:
                queue_view(session, "newbie", limit=50, selection=policy)
            loads.append(time.perf_counter() - began)
        began = time.perf_counter()
        with store.transaction() as session:
            selection_settledness(session, policy)
        settled = time.perf_counter() - began
        view = "weighed by reliability" if weigh else "one vote each"
        print(f"{view:<24} queue_view {', '.join(f'{x:.2f}' for x in loads)} s; settledness {settled:.2f} s")
    store.close()


if __name__ == "__main__":
    main()
