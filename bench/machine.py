"""The machine's details that head the table: figures mean little without them."""

from __future__ import annotations

import os
import platform
import sqlite3
from pathlib import Path


def describe() -> list[str]:
    """`name: value` lines for CPU, cores, memory, Python, SQLite and OS."""
    return [
        f"CPU:     {_cpu_model()}",
        f"cores:   {os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable by this process)",
        f"memory:  {_mem_total_gib():.1f} GiB",
        f"Python:  {platform.python_implementation()} {platform.python_version()}",
        f"SQLite:  {sqlite3.sqlite_version} (library linked into Python's sqlite3)",
        f"OS:      {_os_name()} / {platform.system()} {platform.release()} {platform.machine()}",
    ]


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every timed figure."""
    return f"{os.getloadavg()[0]:.2f}"


def _cpu_model() -> str:
    for line in _read_lines("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    for line in _read_lines("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20  # the value is in KiB
    return float("nan")


def _os_name() -> str:
    for line in _read_lines("/etc/os-release"):
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
