"""The one place that masks secrets: the API key and the tokens inside channel URLs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

MASK = "***"
# Shorter fragments ("api", "443") would mask ordinary words; real tokens are longer.
_MIN_SECRET = 6
_SPLIT = re.compile(r"[/:@?&=#,;+ ]")


class Redactor:
    """Replaces every known secret (longest first) with a mask."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        found = {s for s in secrets if s and len(s) >= _MIN_SECRET}
        self._secrets = sorted(set(self._secrets) | found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def private_url(url: str) -> str:
    """An apprise URL with its secrets masked, as apprise itself prints it."""
    plugin = _instantiate(url)
    if plugin is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme}://{MASK} (not an apprise URL)"
    return str(plugin.url(privacy=True))


def url_secrets(url: str) -> list[str]:
    """Every fragment of an apprise URL that apprise itself hides, plus the URL."""
    shown = private_url(url)
    fragments = {url, unquote(url)}
    for part in _SPLIT.split(url):
        for piece in (part, unquote(part)):
            if len(piece) >= _MIN_SECRET and piece not in shown:
                fragments.add(piece)
    return sorted(fragments, key=len, reverse=True)


def _instantiate(url: str) -> Any:
    # Lazy: apprise loads its plugin registry on import (~80 ms), needed only here
    # and in delivery.
    import apprise

    try:
        return apprise.Apprise.instantiate(url)
    except Exception:  # noqa: BLE001 - a URL apprise cannot parse is simply unknown
        return None
