"""worker.delivery.Sender: apprise in a child process, through real plugins to loopback receivers.

The receivers misbehave as real ones do: refuse, answer slowly, hang, trickle their
answer one byte at a time. Whatever they do, a send ends within send_timeout (plus the
child's start), and nothing of an abandoned send (process, thread, socket) survives it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import RecordedRequest, Resp, SmtpServer, WebhookReceiver

from worker.delivery import Delivered, Failed, Sender

TITLE = "creditwatch: low-balance firing"
BODY = "remaining $9.00 is below $10.00\nburn $1.20/h, runway about 7h"
# A child starting apprise on a loaded 2-core machine; the send's own bound comes on top.
START = 5.0


class TricklingReceiver(WebhookReceiver):
    """Accepts each message, then answers 200 one byte every `gap` seconds, for ever."""

    def __init__(self, gap: float = 0.5) -> None:
        super().__init__()
        self.gap = gap

    def _decide(self, request: RecordedRequest) -> Resp:
        super()._decide(request)
        return Resp.json({"ok": True, "padding": "x" * 10_000}, trickle=self.gap)


def sender_children() -> set[int]:
    """Live `worker.sender` processes whose parent is this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        state = stat.rpartition(")")[2].split()[0]
        if b"worker.sender" in cmdline and parent == os.getpid() and state != "Z":
            found.add(int(entry.name))
    return found


@pytest.fixture
def sender(webhook: WebhookReceiver) -> Iterator[Sender]:
    made = Sender("chat", webhook.apprise_url(), send_timeout=3.0)
    yield made
    made.close()


def test_webhook_delivery_carries_title_message_and_every_type(
        webhook: WebhookReceiver, sender: Sender) -> None:
    for i, notify_type in enumerate(["info", "success", "warning", "failure"]):
        assert sender.send(i, TITLE, BODY, notify_type) == Delivered()
    messages = webhook.wait_for(4)
    assert [m["type"] for m in messages] == ["info", "success", "warning", "failure"]
    assert all(m["title"] == TITLE and m["message"] == BODY for m in messages)
    assert webhook.count == 4  # one POST each: apprise's own retries stay off
    assert len(sender_children()) == 1  # one child serves the channel's sends in turn
    sender.close()
    assert sender_children() == set()


def test_a_refusing_webhook_is_failed_once_per_send(webhook: WebhookReceiver, sender: Sender) -> None:
    for status in (500, 503, 404, 401):
        webhook.set_failing(True, status=status)
        result = sender.send(status, TITLE, BODY, "warning")
        assert isinstance(result, Failed), status
        assert "did not accept" in result.reason
    assert webhook.messages == []
    assert webhook.count == 4  # apprise did not retry behind the outbox's back
    webhook.set_failing(False)
    assert sender.send(5, TITLE, BODY, "warning") == Delivered()


def test_a_slow_receiver_within_send_timeout_gets_the_message_once(webhook: WebhookReceiver) -> None:
    """apprise's own read timeout (4 s) must not cut a receiver that answers in 6 s."""
    webhook.set_hang(6)
    sender = Sender("chat", webhook.apprise_url(), send_timeout=9.0)
    try:
        assert sender.send(1, TITLE, BODY, "warning") == Delivered()
    finally:
        sender.close()
    assert webhook.count == 1 and len(webhook.messages) == 1


@pytest.mark.parametrize("kind", ["hang", "trickle"])
def test_a_stuck_receiver_is_abandoned_for_good_at_send_timeout(kind: str) -> None:
    receiver = TricklingReceiver(gap=0.5) if kind == "trickle" else WebhookReceiver()
    with receiver:
        if kind == "hang":
            receiver.set_hang(60)
        sender = Sender("chat", receiver.apprise_url(), send_timeout=2.0)
        started = time.monotonic()
        result = sender.send(1, TITLE, BODY, "warning")
        elapsed = time.monotonic() - started
        assert isinstance(result, Failed), result
        assert elapsed < 2.0 + START, elapsed
        if kind == "trickle":
            # apprise gave up waiting but its thread is stuck on the socket: the child
            # is gone already, and nothing of the send survives it.
            assert sender_children() == set()
        # The next send starts a fresh child; it is abandoned the same way.
        again = sender.send(2, TITLE, BODY, "warning")
        assert isinstance(again, Failed)
        sender.close()
        assert sender_children() == set()


def test_nothing_listening_is_failed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = Sender("chat", f"json://127.0.0.1:{port}/hook", send_timeout=2.0)
    try:
        assert isinstance(sender.send(1, TITLE, BODY, "info"), Failed)
    finally:
        sender.close()


@pytest.mark.parametrize("url", ["nosuchscheme://example.com/x", "not a url"])
def test_an_unknown_url_fails_every_send_without_a_retry_storm(url: str) -> None:
    sender = Sender("bogus", url, send_timeout=1.0)
    try:
        first = sender.send(1, TITLE, BODY, "warning")
        started = time.monotonic()
        second = sender.send(2, TITLE, BODY, "warning")
        assert time.monotonic() - started < 0.5  # no second child for a URL that cannot load
    finally:
        sender.close()
    assert isinstance(first, Failed) and isinstance(second, Failed)
    assert "could not load" in first.reason and first.reason == second.reason



def test_mail_keeps_its_line_breaks_and_the_title_as_subject(smtp: SmtpServer) -> None:
    sender = Sender("email", smtp.apprise_url(to="ops@example.com"), send_timeout=10.0)
    try:
        result = sender.send(1, TITLE, BODY, "failure")
    finally:
        sender.close()
    assert result == Delivered()
    [mail] = smtp.wait_for(1)
    assert mail.subject == TITLE
    assert mail.body.splitlines() == BODY.splitlines()  # one fact a line, not one paragraph
    assert mail.envelope_to == ("ops@example.com",)


def test_html_mail_has_a_plain_text_part_with_its_lines(smtp: SmtpServer) -> None:
    url = smtp.apprise_url(to="ops@example.com").replace("format=text", "format=html")
    sender = Sender("email", url, send_timeout=10.0)
    try:
        assert sender.send(1, TITLE, BODY, "failure") == Delivered()
    finally:
        sender.close()
    [mail] = smtp.wait_for(1)
    assert mail.body.splitlines() == BODY.splitlines()  # the text/plain alternative
    assert b"<br" in mail.raw  # and the HTML part breaks its lines too


def test_mail_refused_by_the_server_is_failed(smtp: SmtpServer) -> None:
    smtp.fail_next(1)
    sender = Sender("email", smtp.apprise_url(), send_timeout=10.0)
    try:
        result = sender.send(1, TITLE, BODY, "warning")
    finally:
        sender.close()
    assert isinstance(result, Failed)
    assert smtp.messages == []
