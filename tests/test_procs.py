"""worker.procs: claim tokens and the malloc arena limit `run` sets before its threads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from worker import procs

ARENAS = textwrap.dedent("""
    import ctypes, sys, threading
    from worker import procs
    if sys.argv[1] == "limit":
        assert procs.limit_malloc_arenas()

    def allocate():
        for _ in range(20_000):
            [bytearray(200) for _ in range(20)]

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL(None).malloc_stats()  # glibc: one "Arena N:" block per arena, on stderr
""")


def _arenas(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True,
                            check=True, timeout=60)
    return sum(line.startswith("Arena ") for line in result.stderr.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_eight_allocating_threads_share_at_most_two_arenas_once_limited() -> None:
    assert _arenas("limit") <= 2
    assert _arenas("free") > 2  # without the limit glibc makes more: the limit is what holds


def test_our_own_token_is_alive_while_in_flight_and_a_dead_pid_is_gone() -> None:
    me = procs.me()
    host, pid, _start = me.split(":")
    assert int(pid) == os.getpid()
    assert not procs.is_gone(me, in_flight=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    assert procs.is_gone(f"{host}:{dead.stdout.strip()}:1")
    assert not procs.is_gone(f"another-host-{host}:1:1")  # another host's claim lapses with its lease


TRIM = textwrap.dedent("""
    from worker import procs

    def rss_kb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

    # ~40 MB in blocks that malloc serves (Python's own allocator takes only those under 512 B),
    # a few survivors keeping the heap's top from shrinking by itself, as after a big page.
    held = [bytearray(2000) for _ in range(20_000)]
    keep = held[::500]
    del held
    before = rss_kb()
    procs.trim_malloc()
    print(before - rss_kb())
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_gives_freed_memory_back_to_the_system() -> None:
    result = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, check=True,
                            timeout=60)
    assert int(result.stdout) > 10_000  # kB given back; without the trim glibc keeps them
