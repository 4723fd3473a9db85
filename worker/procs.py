"""Who holds a claim: "host:pid:start" tokens, and whether such a process still exists.

The start time (clock ticks since boot, from /proc) tells a recycled pid from the
process that made the claim. A token from another host is never judged gone: its
claim lapses with its lease instead.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from typing import Any


@cache
def me() -> str:
    """This process's token."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}"


def is_gone(token: str | None, in_flight: bool = False) -> bool:
    """Whether the process behind `token` is known to no longer exist.

    Our own token counts as gone unless this process has the claim in flight: a claim
    we left behind (a failed database write after a send) is ours to take back at once.
    """
    if not token:
        return True
    if token == me():
        return not in_flight
    host, _, rest = token.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    start = _start_ticks(int(pid_text))
    return start is None or str(start) != start_text


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (after the parenthesised command name), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # fields[0] is the state (field 3), so field 22 is fields[19].
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Ask glibc's malloc for at most `arenas` arenas, before the process starts its threads.

    glibc gives each thread that allocates under contention an arena of its own (up to 8 per
    core), and memory freed in one is never returned to another: `run`'s scheduler, server,
    lease keeper and per-tick fetch threads cost about 3 MB of resident memory that way
    (`make bench`: 76.2 -> 73.0 MB). The same as MALLOC_ARENA_MAX=2 in the environment, which
    a service cannot count on. False (and nothing done) on a C library without it."""
    mallopt = _libc_function("mallopt")
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def trim_malloc() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere).

    Python frees a page's or a tick's objects into malloc, which keeps the pages: after a
    30-day status page (a 1 MB answer built from a month of figures) `run` would hold on to
    its peak. About 0.2 ms; `run` calls it after each tick and each HTTP request."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


@cache
def _libc_function(name: str) -> Any:
    try:
        import ctypes  # only here: `run` alone needs it

        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
