"""Who holds a claim: "host:pid:start" tokens, and whether such a process still exists.

The start time (clock ticks since boot, from /proc) tells a recycled pid from the
process that made the claim. A token from another host is never judged gone: its
claim lapses with its lease instead.
"""

from __future__ import annotations

import os
import socket
from functools import cache


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
