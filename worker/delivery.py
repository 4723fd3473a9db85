"""Delivery through apprise: one Apprise object per channel, so a failure belongs to one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivered:
    """The channel accepted the notification."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The channel did not accept it; `permanent` means retrying cannot help by itself."""

    reason: str
    permanent: bool = False


Result = Delivered | Failed


class Channel:
    """One named apprise target. Never raises from `send`."""

    def __init__(self, name: str, url: str) -> None:
        # Lazy: apprise builds its plugin registry on import; commands that never
        # deliver (status, history, --help) should not pay for it.
        import apprise

        self.name = name
        self._apprise = apprise.Apprise()
        self.valid = bool(self._apprise.add(url))

    def send(self, title: str, body: str, notify_type: str, timeout: float) -> Result:
        """Send one notification, bounded by `timeout` seconds for the whole call."""
        if not self.valid:
            return Failed("apprise does not recognise this channel's URL", permanent=True)
        try:
            result: Any = self._apprise.notify(
                body=body, title=title, notify_type=notify_type, timeout=timeout
            )
        except Exception as err:  # noqa: BLE001 - a plugin's own bug must not stop the tick
            return Failed(f"the channel raised {type(err).__name__}")
        # apprise 2.x returns an AppriseResult whose truth is success; never test `is None`.
        if result:
            return Delivered()
        status = getattr(getattr(result, "status", None), "name", "FAILURE")
        return Failed(f"the channel did not accept the notification ({status.lower()})")


def check_urls(channels: dict[str, str]) -> list[str]:
    """One `channels[i].url` problem line per URL apprise cannot load."""
    import apprise  # lazy, see Channel

    problems = []
    for i, (name, url) in enumerate(channels.items()):
        if apprise.Apprise.instantiate(url) is None:
            scheme = url.split("://", 1)[0]
            problems.append(f"channels[{i}].url: apprise does not support this URL "
                            f"(scheme {scheme!r}) for channel {name!r}")
    return problems
