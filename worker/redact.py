"""The one place that masks secrets: the API key and the tokens inside channel URLs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

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
    """Every fragment of an apprise URL that could be a secret, plus the URL itself.

    That is what apprise hides in its privacy URL, and also every credential, path
    segment and query value: webhook plugins (json://, form://, ...) carry tokens
    in their path or query and apprise shows those. Masking a harmless segment
    too costs nothing; missing a token leaks it.
    """
    shown = private_url(url)
    fragments = {url, unquote(url)}
    for part in _SPLIT.split(url):
        for piece in (part, unquote(part)):
            if len(piece) >= _MIN_SECRET and piece not in shown:
                fragments.add(piece)
    fragments.update(_url_parts(url))
    return sorted((f for f in fragments if len(f) >= _MIN_SECRET), key=len, reverse=True)


def _url_parts(url: str) -> set[str]:
    try:
        parts = urlsplit(url)
        userinfo = [parts.username or "", parts.password or ""]
    except ValueError:
        return set()
    pieces = [*userinfo, *parts.path.split("/"), *(v for _, v in parse_qsl(parts.query))]
    return {p for piece in pieces for p in (piece, unquote(piece), quote(piece, safe=""))}


def _instantiate(url: str) -> Any:
    # Lazy: apprise loads its plugin registry on import (~80 ms), needed only here
    # and in delivery.
    import apprise

    try:
        return apprise.Apprise.instantiate(url)
    except Exception:  # noqa: BLE001 - a URL apprise cannot parse is simply unknown
        return None
