"""systemd's notify protocol (sd_notify(3)), with the standard library alone.

A service of `Type=notify` tells the manager how it is doing by sending datagrams of
newline-separated `KEY=VALUE` assignments to the AF_UNIX socket named in
$NOTIFY_SOCKET: a path, or an abstract-namespace name when it starts with '@'.
READY=1 says start-up is complete, WATCHDOG=1 keeps the watchdog from firing,
STOPPING=1 says shutdown has begun, STATUS= is a line `systemctl status` shows.

$WATCHDOG_USEC holds the watchdog period in microseconds; when $WATCHDOG_PID is set too,
the watchdog is meant for that process alone (sd_watchdog_enabled(3)).

A Notifier never raises and never blocks for long: without $NOTIFY_SOCKET (not started
by systemd) it does nothing; a failed send is logged at DEBUG and forgotten, since the
service must run on whether or not anyone listens.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("creditwatch.sdnotify")

SEND_TIMEOUT = 1.0  # seconds: a manager too busy to take a datagram must not stall a tick


class Notifier:
    """Sends sd_notify messages to one socket; a no-op when `address` is None."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None) -> Notifier:
        """The notifier that `environ` asks for (a no-op without a usable $NOTIFY_SOCKET);
        `pid` is this process's id, for $WATCHDOG_PID (default: os.getpid())."""
        address = socket_address(environ.get("NOTIFY_SOCKET", ""))
        return cls(address, watchdog_usec(environ, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_seconds(self) -> float | None:
        """The watchdog period meant for this process, or None when there is none."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 1e6

    def notify(self, *assignments: str) -> bool:
        """Send `assignments` (such as "READY=1") in one datagram; whether it was sent."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(payload, self.address)
        except OSError as err:
            log.debug("systemd notification not sent: %s", err.strerror or type(err).__name__)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def watchdog(self, status: str | None = None) -> bool:
        return self.notify("WATCHDOG=1", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))


def _status(text: str | None) -> tuple[str, ...]:
    # One line: the protocol separates assignments by newlines.
    return () if text is None else (f"STATUS={' '.join(text.split())}",)


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a $NOTIFY_SOCKET value: a path, an abstract name (a
    leading NUL byte instead of '@'), or None when unset or of a kind we do not speak
    (such as vsock:, which systemd uses for virtual machines)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """$WATCHDOG_USEC when it is meant for process `pid`, else None (sd_watchdog_enabled)."""
    usec, owner = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    if owner and not (owner.isascii() and owner.isdigit() and int(owner) == pid):
        return None
    return int(usec)
