"""The one place that masks secrets: the API key, database credentials and the secret parts
of channel URLs.

Masking is exact. A channel URL is cut into its parts and each part is judged on its own:
apprise says which of a plugin's tokens are private (the `private` flag of its template
tokens and arguments); credentials and query values whose names say secret are masked
whatever the plugin; and a path segment or query value that looks like a token (see
`looks_like_token`) is masked too, because generic webhooks (json://, form://, xml://) keep
their tokens in the path and apprise shows those in clear. Scheme, host and port stay
visible, unless the plugin itself keeps a token there (pover://USER_KEY@APP_TOKEN).
Ordinary words (hooks, balance, api, v1) never turn into the mask.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"
# Secrets are replaced wherever they appear only from this length on: a shorter one ("pw",
# "1234") would also mask ordinary words and amounts. Shorter credentials are still masked
# where they stand as credentials: a URL's password, or a query value named like a secret.
_MIN_SECRET = 6
# Query names that say "secret" (matched anywhere in the name, case-insensitive).
_SECRET_NAME = re.compile(r"token|key|secret|pass|pwd|auth|sig|hook|credential|session|cookie|bearer",
                          re.IGNORECASE)
# A URL's password: scheme://user:PASSWORD@ (the user part has no ':', the password may).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:)(?P<secret>[^\s/?#@]+)(?=@)")
# A query value whose name says secret: ?api_key=VALUE or &+X-Token=VALUE.
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?P<name>[^\s=&#?;]*)=)(?P<secret>[^\s&#;\"'<>]+)")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
_HOSTNAME = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


# ----------------------------------------------------------------------------- the redactor


class Redactor:
    """Masks every known secret (longest first), then every credential in a URL position."""

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
        return mask_credentials(text)


def mask_credentials(text: str) -> str:
    """`text` with every URL password and every secret-named query value masked, whatever its length."""
    text = _USERINFO.sub(lambda m: m["head"] + MASK, text)
    return _QUERY_SECRET.sub(_mask_query_value, text)


def _mask_query_value(match: re.Match[str]) -> str:
    return match["head"] + MASK if _secret_name(match["name"]) else match[0]


def _secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(unquote(name)))


def looks_like_token(text: str) -> bool:
    """Whether a URL part looks machine-made: at least 16 characters mixing letters and
    digits, or at least 24 mixing upper and lower case. E-mail addresses and host names are
    not tokens; words such as hooks, balance or creditwatch are far from both bounds."""
    if "@" in text or (len(text) < 64 and _HOSTNAME.match(text) and text.rsplit(".", 1)[1].isalpha()):
        return False
    letters, digits = any(c.isalpha() for c in text), any(c.isdigit() for c in text)
    if len(text) >= 16 and letters and digits:
        return True
    return len(text) >= 24 and any(c.isupper() for c in text) and any(c.islower() for c in text)


def credentials(url: str) -> tuple[str, ...]:
    """A URL's password and secret-named query values, as written and decoded (for a database URL)."""
    found = [m["secret"] for m in _USERINFO.finditer(url)]
    found += [m["secret"] for m in _QUERY_SECRET.finditer(url) if _secret_name(m["name"])]
    return _forms(found)


def _forms(parts: Iterable[str]) -> tuple[str, ...]:
    """Each part as written, percent-decoded and percent-encoded: logs may show any of them."""
    out: set[str] = set()
    for part in parts:
        plain = unquote(part)
        out.update({part, plain, unquote_plus(part), quote(plain, safe=""), quote_plus(plain),
                    quote(plain, safe="/:@")})
    return tuple(sorted((s for s in out if s), key=lambda s: (-len(s), s)))


# ----------------------------------------------------------------------------- channel URLs


@dataclass(frozen=True)
class UrlInfo:
    """What is known of one channel URL. `shown` is safe to print; `secrets` are the exact
    fragments to register with a Redactor; `problem` is one line when apprise cannot load it."""

    valid: bool
    problem: str | None
    shown: str
    secrets: tuple[str, ...]


@dataclass
class _Parts:
    """A URL cut where apprise cuts it: scheme://[user[:password]@]hostport[/path][?query]."""

    scheme: str
    user: str | None
    password: str | None
    hostport: str
    path: list[str]  # segments after the first '/', '' included
    has_path: bool
    query: list[tuple[str, str | None]]  # (name, value); value None for a bare name


def inspect_url(url: str) -> UrlInfo:
    """Judge a channel URL with apprise's own knowledge: valid or why not, how to show it,
    and which fragments are secret. A plain function of its argument; never raises."""
    parts = _split(url)
    if parts is None:
        problem = "not an apprise URL: it needs a scheme, such as json:// or mailtos://"
        return UrlInfo(False, problem, MASK, _forms([url]))
    loaded = _load(url)
    if loaded.problem is not None:
        # apprise cannot say which part is secret: apprise's own reason is told with every
        # part masked, and only the scheme is shown. Registering every part would mask
        # ordinary words in the error lines; credentials and token-like parts are enough,
        # since the URL is refused and never used.
        problem = _with_reason(loaded.problem, loaded.reason, _forms(_all_pieces(parts)))
        return UrlInfo(False, problem, f"{parts.scheme}://{MASK}",
                       _forms([url, *_Masked(parts, _Loaded()).secrets()]))
    masked = _Masked(parts, loaded)
    return UrlInfo(True, None, masked.shown(), _forms(masked.secrets()))


def channel_problem(index: int, name: str, info: UrlInfo) -> str | None:
    """The `channels[i].url` problem line for one inspected channel, or None when it is usable."""
    if info.valid:
        return None
    return f"channels[{index}].url: for channel {name!r}, {info.problem}"


def channel_problems(channels: dict[str, str]) -> list[str]:
    """One `channels[i].url` problem line per channel URL apprise cannot load, in order."""
    lines = (channel_problem(i, name, inspect_url(url)) for i, (name, url) in enumerate(channels.items()))
    return [line for line in lines if line is not None]


def _split(url: str) -> _Parts | None:
    match = _SCHEME.match(url)
    if match is None:
        return None
    rest = match["rest"]
    authority, sep, tail = _cut(rest, "/?")
    path_text, _, query_text = (sep + tail).partition("?") if sep else ("", "", "")
    userinfo, at, hostport = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    query = [(name, value if eq else None)
             for name, eq, value in (item.partition("=") for item in query_text.split("&") if item)]
    return _Parts(match["scheme"], user if at else None, password if colon else None, hostport,
                  path_text[1:].split("/") if path_text else [], bool(path_text), query)


def _cut(text: str, stops: str) -> tuple[str, str, str]:
    at = min((i for i in (text.find(c) for c in stops) if i >= 0), default=-1)
    return (text, "", "") if at < 0 else (text[:at], text[at], text[at + 1:])


def _all_pieces(parts: _Parts) -> list[str]:
    host = parts.hostport.rsplit(":", 1)[0] if parts.hostport.count(":") == 1 else parts.hostport
    pieces = [parts.user or "", parts.password or "", parts.hostport, host, *parts.path]
    pieces += [p for name, value in parts.query for p in (name, value or "")]
    return [p for p in pieces if p]


class _Masked:
    """A loaded URL's parts, each masked or not by the rules in the module docstring."""

    def __init__(self, parts: _Parts, loaded: _Loaded) -> None:
        self.parts = parts
        self.private = [p for p in loaded.private if p]
        self.names = loaded.private_names
        self.choices = loaded.choices

    def _private(self, piece: str) -> bool:
        """Whether a part is, holds, or is one element of a private value of the plugin."""
        plain = unquote(piece)
        return any(plain == p or (len(p) >= _MIN_SECRET and p in plain)
                   or plain in re.split(r"[/:]", p) for p in self.private)

    def user(self) -> bool:
        return self.parts.user is not None and self._private(self.parts.user)

    def host(self) -> bool:
        return self._private(self.parts.hostport) or self._private(self.parts.hostport.rsplit(":", 1)[0])

    def segment(self, segment: str) -> bool:
        return bool(segment) and (self._private(segment) or looks_like_token(unquote(segment)))

    def value(self, name: str, value: str) -> bool:
        bare = unquote(name).lstrip("+-:").lower()
        if not value or unquote(value).lower() in self.choices.get(bare, ()):
            return False  # one of the argument's documented choices ("auth=basic"), not a secret
        return (_secret_name(name) or bare in self.names or self._private(value)
                or looks_like_token(unquote(value)))

    def shown(self) -> str:
        p = self.parts
        auth = ""
        if p.user is not None:
            auth = (MASK if self.user() else p.user) + (f":{MASK}" if p.password else "") + "@"
        path = "/" + "/".join(MASK if self.segment(s) else s for s in p.path) if p.has_path else ""
        query = "&".join(self._shown_item(name, value) for name, value in p.query)
        return f"{p.scheme}://{auth}{MASK if self.host() else p.hostport}{path}{'?' + query if query else ''}"

    def _item(self, name: str, value: str | None) -> bool:
        # A bare item (?TOKEN) is judged like a path segment.
        return self.segment(name) if value is None else self.value(name, value)

    def _shown_item(self, name: str, value: str | None) -> str:
        if value is None:
            return MASK if self._item(name, value) else name
        return f"{name}={MASK if self._item(name, value) else value}"

    def secrets(self) -> list[str]:
        p = self.parts
        found = [p.password] if p.password else []
        found += [p.user] if p.user and self.user() else []
        found += [p.hostport] if self.host() else []
        found += [s for s in p.path if self.segment(s)]
        found += [n if v is None else v for n, v in p.query if self._item(n, v)]
        # A private token as apprise holds it (tgram's bot token spans host and port).
        whole = unquote(_rebuild(p))
        return found + [v for v in self.private if v in whole]


def _rebuild(parts: _Parts) -> str:
    query = "&".join(n if v is None else f"{n}={v}" for n, v in parts.query)
    return f"{parts.user or ''}:{parts.password or ''}@{parts.hostport}/{'/'.join(parts.path)}?{query}"


# ----------------------------------------------------------------------------- apprise


_FLAGS = frozenset({"yes", "no", "true", "false", "on", "off", "0", "1"})


@dataclass(frozen=True)
class _Loaded:
    """apprise's verdict: a problem (and its own reason), or what its plugin calls private."""

    problem: str | None = None
    reason: str | None = None
    private: list[str] = field(default_factory=list)
    private_names: set[str] = field(default_factory=set)
    choices: dict[str, frozenset[str]] = field(default_factory=dict)


def _load(url: str) -> _Loaded:
    """apprise's verdict on `url`: a problem, or the private values of its plugin."""
    # Lazy: apprise builds its registry of ~190 plugins on import (~14.5 MB), and only
    # commands that judge or send to channels need it.
    from apprise import Apprise, plugins
    from apprise.apprise import N_MGR

    from worker.sender import apprise_object

    apprise_object()  # registers the custom plugins of $APPRISE_PLUGIN_PATH, as the sender does
    with _apprise_log() as records:
        try:
            to_dict: Any = plugins.url_to_dict  # untyped in apprise
            results = to_dict(url, secure_logging=True)
            plugin = N_MGR[results["schema"]] if results else None
            instance = Apprise.instantiate(dict(results)) if plugin is not None and plugin.enabled else None
        except Exception:  # noqa: BLE001 - a plugin's parser may raise on odd input: the URL is unusable
            results = plugin = instance = None
    reason = next((r for r in records if not r.startswith(_GENERIC_LOG_LINES)), None)
    scheme = url.split("://", 1)[0].lower()
    if plugin is None:
        return _Loaded(problem=_unknown_scheme(scheme), reason=reason)
    name = str(results["schema"])
    if not plugin.enabled:
        return _Loaded(problem=f"apprise's {name}:// plugin is not available on this system "
                               "(a library it needs is missing)")
    if instance is None:
        return _Loaded(problem=f"apprise could not load this {name}:// URL (malformed: check its "
                               f"tokens against apprise's {name}:// format)", reason=reason)
    names = _private_names(plugin)
    return _Loaded(private=_private_values(names, results, instance), private_names=names,
                   choices=_choices(plugin))


_GENERIC_LOG_LINES = ("Could not load", "Unparseable", "Unsupported URL")


def _unknown_scheme(scheme: str) -> str:
    if scheme in ("http", "https"):
        return ("apprise has no plugin for this http(s) URL; for a plain webhook use json://, "
                "jsons://, form:// or xml:// with the same host and path")
    # The scheme is not named: the whole URL may have come from ${VAR}.
    return "apprise has no plugin for this URL's scheme (see apprise's list of supported services)"


def _with_reason(problem: str, reason: str | None, secrets: Iterable[str]) -> str:
    """The problem, with apprise's own reason when it has one, every URL part masked in it."""
    if not reason:
        return problem
    for piece in sorted(set(secrets), key=len, reverse=True):
        reason = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", MASK, reason)
    reason = " ".join(mask_credentials(reason).split())[:200]
    return f"{problem}; apprise says: {_printable(reason)}"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _private_names(plugin: Any) -> set[str]:
    """The names of a plugin's private tokens and arguments, their targets and their aliases."""
    specs = {**getattr(plugin, "template_tokens", {}), **getattr(plugin, "template_args", {})}
    names = {"password"}
    for key, spec in specs.items():
        if isinstance(spec, dict) and spec.get("private"):
            names.add(key)
            if isinstance(spec.get("map_to"), str):
                names.add(spec["map_to"])
    for key, spec in specs.items():
        alias = spec.get("alias_of") if isinstance(spec, dict) else None
        targets = (alias,) if isinstance(alias, str) else tuple(alias or ())
        if names.intersection(targets):
            names.add(key)
    return {n.lower() for n in names}


def _choices(plugin: Any) -> dict[str, frozenset[str]]:
    """Each argument's documented values (ntfy's auth=basic|token, yes/no for a flag), which
    are never secrets."""
    specs = getattr(plugin, "template_args", {})
    choices = {}
    for key, spec in specs.items():
        if isinstance(spec, dict) and spec.get("values"):
            choices[key.lower()] = frozenset(str(v).lower() for v in spec["values"])
        elif isinstance(spec, dict) and spec.get("type") == "bool":
            choices[key.lower()] = _FLAGS
    return choices


def _private_values(names: set[str], results: dict[str, Any], instance: Any) -> list[str]:
    values: list[str] = []
    for name in names:
        for source in (results.get(name), getattr(instance, name, None)):
            values += _strings(source)
    return values


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple | set):
        return [v for v in value if isinstance(v, str)]
    return []


@contextmanager
def _apprise_log() -> Iterator[list[str]]:
    """Collect apprise's warnings instead of letting them reach stderr (they quote URL parts)."""
    logger = logging.getLogger("apprise")
    records: list[str] = []
    handler = _Collect(records)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Collect(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        # A record whose arguments do not fit its format is simply not kept.
        with suppress(Exception):
            self._records.append(record.getMessage())
