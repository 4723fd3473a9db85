"""cProfile across threads: a tick fetches and delivers on threads of its own.

cProfile only sees the thread that enabled it. threading.setprofile installs a
hook in every thread started afterwards; on its first call the hook swaps
itself for a fresh profiler in that thread, and all of them are merged at the end.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


def profile(work: Callable[[], object], threads: str = "cw-", top: int = 30) -> str:
    """Run `work` under cProfile in its thread and in new threads named `threads`...; the top entries.

    The name filter keeps out the fake servers' own request threads, which run
    in this process too but are no part of the code under test.
    """
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(_frame: FrameType, _event: str, _arg: Any) -> None:
        sys.setprofile(None)
        if not threading.current_thread().name.startswith(threads):
            return
        profiler = cProfile.Profile()
        with lock:
            profilers.append(profiler)
        profiler.enable()

    main = cProfile.Profile()
    threading.setprofile(start_in_thread)
    main.enable()
    try:
        work()
    finally:
        main.disable()
        threading.setprofile(None)  # None removes the hook
    for profiler in profilers:
        profiler.disable()
    return _report(main, profilers, top)


def _report(main: cProfile.Profile, others: list[cProfile.Profile], top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(main, stream=out)
    for profiler in others:
        stats.add(profiler)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()
