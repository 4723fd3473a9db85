"""Resident memory from /proc, standard library only: servechild.py imports it, and an import
there counts against creditwatch's figure."""

from __future__ import annotations

from pathlib import Path


def status_kb(field: str, pid: int | str = "self") -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM...)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    msg = f"/proc/{pid}/status has no {field}"
    raise RuntimeError(msg)


def tree_rss_kb(root: int) -> int:
    """VmRSS of `root` and every live descendant (sender and chart children, were any running)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier += children
    total = 0
    for pid in tree:
        try:
            total += status_kb("VmRSS", pid)
        except (OSError, RuntimeError):
            continue  # it ended meanwhile
    return total
