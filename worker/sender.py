"""`python -m worker.sender`: one channel's sends, in a short-lived child process.

Threads cannot be killed in Python, and a receiver that trickles bytes defeats every
socket timeout, so apprise runs here and the parent kills this process when a send
overruns: nothing of an abandoned send outlives it. apprise (its ~190-plugin
registry, ~14.5 MB) also never enters the resident service this way.

Protocol, one JSON object a line. The parent writes the channel first,
`{"url": ..., "send_timeout": seconds}`, then one message a line,
`{"id", "title", "body", "notify_type", "attach": [paths]}`. This process answers
`{"ready": true}` (or `{"ready": false, "reason"}`), then for each message
`{"id", "event": "start"}` when the send begins (after any pacing) and
`{"id", "ok": bool, "reason": str}` when it ends. End of input ends the process.
Secrets arrive on stdin, never in argv or the environment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import sys
import time
from typing import IO, Any

PLUGIN_PATH_VARIABLE = "APPRISE_PLUGIN_PATH"
EXIT_OVERRAN = 70
# Past send_timeout the parent kills us; this is the bound if the parent died meanwhile.
SELF_DESTRUCT_MARGIN = 2.0


def main(argv: list[str]) -> int:
    """`inspect`: judge the channel URLs given as a JSON list on stdin; else serve one channel."""
    if argv[1:] == ["inspect"]:
        return _inspect()
    return _serve()


def _inspect() -> int:
    """Write one redact.UrlInfo (as a JSON object) per URL read: `run` keeps apprise out of
    its own memory by judging its channels here."""
    from worker.redact import inspect_url

    urls = json.loads(sys.stdin.read())
    _write(sys.stdout, {"infos": [dataclasses.asdict(inspect_url(str(u))) for u in urls]})
    return 0


def _serve() -> int:
    """Serve one channel until end of input."""
    # apprise's own log lines may carry URL fragments: they go nowhere but into each
    # result's captured logs (stderr is /dev/null), and the parent redacts the reason.
    logging.getLogger().addHandler(logging.NullHandler())
    out = sys.stdout
    first = sys.stdin.readline()
    if not first:
        return 0
    config = json.loads(first)
    timeout = float(config["send_timeout"])
    channel = _load(str(config["url"]), timeout)
    if isinstance(channel, str):
        _write(out, {"ready": False, "reason": channel})
        return 0
    _write(out, {"ready": True})
    signal.signal(signal.SIGALRM, lambda *_: os._exit(EXIT_OVERRAN))
    for line in sys.stdin:
        message = json.loads(line)
        channel.pace()
        _write(out, {"id": message["id"], "event": "start"})
        signal.setitimer(signal.ITIMER_REAL, timeout + SELF_DESTRUCT_MARGIN)
        ok, reason, timed_out = channel.send(message, timeout)
        signal.setitimer(signal.ITIMER_REAL, 0)
        _write(out, {"id": message["id"], "ok": ok, "reason": reason})
        if timed_out:
            # apprise stopped waiting, but its worker thread may still be stuck on the
            # socket: only ending the process ends it.
            os._exit(0)
    return 0


class _Channel:
    """One apprise target whose socket timeouts follow send_timeout, paced by us."""

    def __init__(self, apobj: Any, plugin: Any) -> None:
        self._apprise = apobj
        # apprise would sleep out its per-service rate inside the send, eating the
        # send's time budget; we space the sends ourselves, before each one starts.
        self._spacing = float(getattr(plugin, "request_rate_per_sec", 0) or 0)
        plugin.request_rate_per_sec = 0
        self._last_end: float | None = None

    def pace(self) -> None:
        if self._last_end is not None:
            wait = self._spacing - (time.monotonic() - self._last_end)
            if wait > 0:
                time.sleep(wait)

    def send(self, message: dict[str, Any], timeout: float) -> tuple[bool, str, bool]:
        """(accepted, reason when not, whether apprise gave up waiting)."""
        try:
            result = self._apprise.notify(
                body=message["body"], title=message["title"], notify_type=message["notify_type"],
                body_format="text", attach=message.get("attach") or None, timeout=timeout,
            )
        except Exception as err:  # noqa: BLE001 - a plugin's own bug is this send's failure
            return False, f"the channel raised {type(err).__name__}", False
        finally:
            self._last_end = time.monotonic()
        # apprise 2.x returns an AppriseResult whose truth is success; never test `is None`.
        if result:
            return True, "", False
        status = getattr(getattr(result, "status", None), "name", "FAILURE")
        return False, _reason(result, status.lower()), status == "TIMEOUT"


def apprise_object() -> Any:
    """An empty apprise.Apprise that also knows the custom plugins named by
    $APPRISE_PLUGIN_PATH (paths separated by newlines or ';', as apprise's own CLI reads it)."""
    import apprise  # lazy: the whole point of the sender process

    paths = [p for p in re.split(r"[\r\n;]+", os.environ.get(PLUGIN_PATH_VARIABLE, "").strip()) if p]
    return apprise.Apprise(asset=apprise.AppriseAsset(plugin_paths=paths) if paths else None)


def _load(url: str, timeout: float) -> _Channel | str:
    apobj = apprise_object()
    if not apobj.add(url):
        return "apprise could not load this channel's URL"
    plugin = apobj[0]
    # apprise's own connect/read timeouts (4 s by default) would cut a slow but
    # healthy receiver short: it got the message, apprise says it failed, and the
    # outbox would send it again.
    plugin.socket_connect_timeout = timeout
    plugin.socket_read_timeout = timeout
    return _Channel(apobj, plugin)


def _reason(result: Any, status: str) -> str:
    detail = ""
    try:
        warnings = [e.message for e in result.logs() if e.level >= logging.WARNING]
        detail = str(warnings[-1]) if warnings else ""
    except Exception:  # noqa: BLE001 - the reason is a courtesy; the status says enough
        detail = ""
    text = f"the channel did not accept the notification ({status})"
    return f"{text}: {detail[:300]}" if detail else text


def _write(out: IO[str], obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
