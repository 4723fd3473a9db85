"""The dead-man switch: one GET after every tick, healthchecks.io style.

`Heartbeat.ping(ok)` GETs the URL when the tick's fetch succeeded and `URL/fail` when it
failed. It never raises, and it ends within `timeout` seconds of wall clock in every phase
(connect, status line, headers) through worker.httpwatch, as the fetch does: a receiver
that trickles its headers or never answers cannot hold a tick longer than that. No
thread or socket is left behind (httpwatch's one watchdog thread serves the whole
process). Name resolution is the one phase bounded only by the resolver's own timeouts,
as for the fetch.

The URL is a secret (anyone holding it can report "alive" in our name): results name
neither it nor any part of it; `shown_url` is the form safe to print, and
`heartbeat_secrets` the fragments a Redactor must mask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import requests

from worker import __version__
from worker.httpwatch import Watch, WatchedAdapter, watching
from worker.redact import MASK, looks_like_token
from worker.settings import Settings

TIMEOUT = 5.0  # seconds, wall clock: the contract's bound on one ping
USER_AGENT = f"creditwatch/{__version__}"
# A path this long is specific enough to mask wherever it appears; a shorter one could be
# an ordinary word ("/ping"), and the whole URL is masked anyway.
_MIN_PATH = 8


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """What one ping did. `ok`: the receiver answered 2xx. `message` is safe to log (no URL)."""

    ok: bool
    message: str
    status: int | None = None
    seconds: float = 0.0


class _NoRedirectSession(requests.Session):
    """Never follows a redirect: the secret URL's ping goes only where it was configured,
    and requests' redirect machinery never reads a 3xx body outside our deadline."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


class Heartbeat:
    """Pings one URL after each tick; see the module docstring for the guarantees."""

    def __init__(self, url: str, timeout: float = TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.timeout = timeout
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> Heartbeat | None:
        """The configured heartbeat, or None when `[heartbeat] url` is not set."""
        url = settings.heartbeat.url
        return None if url is None else cls(url.get_secret_value())

    @property
    def shown(self) -> str:
        """The URL as it may be printed: scheme and host, the rest masked."""
        return shown_url(self.url)

    def ping(self, ok: bool) -> HeartbeatResult:
        """GET the URL (ok) or URL/fail (not ok) within `timeout`; never raises."""
        target = self.url if ok else self.url.rstrip("/") + "/fail"
        what = "heartbeat" if ok else "heartbeat /fail"
        started = self._clock()
        try:
            with watching(started + self.timeout, self._clock) as watch:
                status, problem = _get(target, watch, self.timeout)
        except Exception as err:  # noqa: BLE001 - the contract is "never raises"; say what it was
            status, problem = None, f"failed unexpectedly ({type(err).__name__})"
        seconds = self._clock() - started
        if problem is not None:
            return HeartbeatResult(False, f"{what} not sent: {problem}", status, seconds)
        return HeartbeatResult(True, f"{what} sent (HTTP {status})", status, seconds)


def _get(url: str, watch: Watch, timeout: float) -> tuple[int | None, str | None]:
    """(status, None) on a 2xx answer, else (status or None, why): our own words only."""
    timed_out = f"timed out after {timeout:g}s"
    session = _NoRedirectSession()
    session.trust_env = False  # no proxy from the environment, no netrc: the URL goes where it says
    adapter = WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        left = watch.left()
        # stream=True: the status line is the answer; the body is never read.
        with session.get(url, headers={"User-Agent": USER_AGENT}, timeout=(left, left),
                         stream=True, allow_redirects=False) as response:
            status = response.status_code
    except TimeoutError:
        return None, timed_out
    except requests.RequestException as err:
        if watch.expired or isinstance(err, requests.Timeout):
            return None, timed_out
        if isinstance(err, requests.ConnectionError):
            return None, "could not connect to the heartbeat URL's host"
        return None, f"request failed ({type(err).__name__})"
    finally:
        session.close()
    if watch.expired:  # the deadline cut the answer short: its head ended at our shutdown
        return None, timed_out
    return status, _status_problem(status)


def _status_problem(status: int) -> str | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status}: the heartbeat URL redirected; redirects are not followed"
    return f"HTTP {status} from the heartbeat URL"


def shown_url(url: str) -> str:
    """`scheme://host[:port]`, then `/***` when the URL has a path: never more of it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    hostport = parts.netloc.rpartition("@")[2]
    auth = f"{MASK}@" if "@" in parts.netloc else ""
    rest = f"/{MASK}" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{auth}{hostport}{rest}"


def heartbeat_secrets(settings: Settings) -> list[str]:
    """The fragments of the heartbeat URL a Redactor must mask (none when it is not set)."""
    url = settings.heartbeat.url
    return [] if url is None else url_secrets(url.get_secret_value())


def url_secrets(url: str) -> list[str]:
    """The whole URL, its credentials, its path when long, and every token-like path
    segment, each as written, percent-decoded and percent-encoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _forms([url])
    found = [url, url.rstrip("/")]
    userinfo = parts.netloc.rpartition("@")[0]
    found += [userinfo, userinfo.partition(":")[2]] if userinfo else []
    found += [parts.path, parts.path.strip("/")] if len(parts.path.strip("/")) >= _MIN_PATH else []
    found += [s for s in parts.path.split("/") if s and looks_like_token(unquote(s))]
    return _forms(found)


def _forms(parts: Iterable[str]) -> list[str]:
    out: set[str] = set()
    for part in parts:
        plain = unquote(part)
        out.update({part, plain, quote(plain, safe=""), quote(plain, safe="/:@")})
    return sorted((s for s in out if s), key=lambda s: (-len(s), s))
