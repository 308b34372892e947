"""Where a command's start-up goes, thread by thread: the herdbook command runs in this process
while a sampler reads every thread's stack every 20 ms, until the command's "start-up" phase ends
(the moment a round's trainer or a generation job begins its own work). Prints, per thread, the
seconds spent inside each import (by module) and each function, inclusive, and the innermost
frames (where the time was really spent: a read, a wait on a child, a lock).

Profilers see one thread; the start-up of ``herdbook train`` is three at once (the dataset export,
the libraries' imports, the weight files' prefetch) and a child process compiling kernels.

A later phase of a round can be reported the same way (``--phase "to GPU and encode"``).

    python3 -m bench.startup_timeline [--every 0.02] [--top 25] [--phase NAME] -- train --home H --mode lora --here
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time

ROOT_MARKERS = ("site-packages/", "/herdbook/", "/lib/python3")


def label(frame) -> str:
    code = frame.f_code
    if code.co_name == "_find_and_load":  # importlib's frame for one module's import
        return f"import {frame.f_locals.get('name')}"
    filename = code.co_filename
    for marker in ROOT_MARKERS:
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{code.co_name}"


class Sampler:
    def __init__(self, every: float) -> None:
        self.every = every
        self.samples: list[tuple[float, str, list[str]]] = []
        self.stop = threading.Event()
        self.began = time.perf_counter()
        self.thread = threading.Thread(target=self.run, name="sampler", daemon=True)

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stop.is_set():
            now = time.perf_counter() - self.began
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack = []
                while frame is not None:
                    stack.append(label(frame))
                    frame = frame.f_back
                self.samples.append((now, names.get(ident, str(ident)), stack[::-1]))
            time.sleep(self.every)

    def report(self, since: float, until: float, top: int) -> None:
        by_thread: dict[str, list[list[str]]] = collections.defaultdict(list)
        for moment, thread, stack in self.samples:
            if since < moment <= until:
                by_thread[thread].append(stack)
        for thread, stacks in sorted(by_thread.items(), key=lambda item: -len(item[1])):
            seconds = len(stacks) * self.every
            print(f"\n## thread {thread}: alive {seconds:.2f} s of {until - since:.2f} s (sampled)")
            inclusive = collections.Counter()
            innermost = collections.Counter()
            for stack in stacks:
                inclusive.update(set(stack))
                innermost[" <- ".join(reversed(stack[-3:]))] += 1
            imports = [(k, v) for k, v in inclusive.most_common() if k.startswith("import ")]
            print("  imports (inclusive):")
            for name, count in imports[:top]:
                print(f"    {count * self.every:6.2f} s  {name}")
            calls = [(k, v) for k, v in inclusive.most_common() if not k.startswith("import ") and "importlib" not in k]
            print("  functions (inclusive):")
            for name, count in calls[:top]:
                print(f"    {count * self.every:6.2f} s  {name}")
            print("  innermost frames:")
            for name, count in innermost.most_common(top):
                print(f"    {count * self.every:6.2f} s  {name[:220]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0.02)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--phase", action="append", help="also report this phase of the round (a name `rounds --json` prints)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the herdbook command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    sampler = Sampler(args.every)
    sampler.thread.start()
    ended: dict[str, tuple[float, float]] = {}  # each phase's window, sampler time
    from herdbook.training import phases

    end = phases.PhaseClock.end

    def noted_end(clock, name, *rest, **named):
        if name not in ended:
            now = time.perf_counter() - sampler.began
            ended[name] = (max((until for _, until in ended.values()), default=0.0), now)
        return end(clock, name, *rest, **named)

    phases.PhaseClock.end = noted_end
    from herdbook.cli import main as herdbook_main  # cli.run would leave with os._exit, before the report

    sys.argv = ["herdbook", *command]
    status = 0
    try:
        herdbook_main()
    except SystemExit as exit_:
        status = exit_.code or 0
    sampler.stop.set()
    sampler.thread.join()
    since, until = ended.get("start-up", (0.0, time.perf_counter() - sampler.began))
    print(f"\nstart-up ended {until:.2f} s after sampling began (exit status {status})")
    print("phases (sampler time, s): " + ", ".join(f"{name} {a:.2f}-{b:.2f}" for name, (a, b) in ended.items()))
    sampler.report(since, until, args.top)
    for name in args.phase or []:
        if name in ended:
            print(f"\n# phase {name!r}, {ended[name][0]:.2f}-{ended[name][1]:.2f} s")
            sampler.report(*ended[name], args.top)


if __name__ == "__main__":
    main()
