"""worker.delivery.Channel through real apprise plugins to loopback receivers."""

from __future__ import annotations

import time

import pytest
from fakes import SmtpServer, WebhookReceiver

from worker.delivery import Channel, Delivered, Failed, check_urls

TITLE = "creditwatch: low-balance firing"
BODY = "remaining $9.00 is below $10.00\nburn $1.20/h, runway about 7h"


def test_webhook_delivery_carries_title_message_and_type(webhook: WebhookReceiver) -> None:
    channel = Channel("chat", webhook.apprise_url())
    assert channel.valid

    result = channel.send(TITLE, BODY, "warning", timeout=5)

    assert result == Delivered()
    [message] = webhook.wait_for(1)
    assert message["title"] == TITLE
    assert message["message"] == BODY
    assert message["type"] == "warning"
    assert webhook.count == 1  # one POST: apprise's own retries stay off


@pytest.mark.parametrize("notify_type", ["info", "success", "warning", "failure"])
def test_every_notify_type_reaches_the_receiver(webhook: WebhookReceiver,
                                                notify_type: str) -> None:
    result = Channel("chat", webhook.apprise_url()).send(TITLE, BODY, notify_type, timeout=5)

    assert isinstance(result, Delivered)
    assert webhook.wait_for(1)[0]["type"] == notify_type


@pytest.mark.parametrize("status", [500, 503, 404, 401])
def test_a_refusing_webhook_is_failed(webhook: WebhookReceiver, status: int) -> None:
    webhook.set_failing(True, status=status)

    result = Channel("chat", webhook.apprise_url()).send(TITLE, BODY, "warning", timeout=5)

    assert isinstance(result, Failed)
    assert result.permanent is False
    assert webhook.messages == []
    assert webhook.count == 1  # apprise did not retry behind the outbox's back


def test_a_failed_then_accepted_send(webhook: WebhookReceiver) -> None:
    webhook.fail_next(1)
    channel = Channel("chat", webhook.apprise_url())

    first = channel.send(TITLE, BODY, "warning", timeout=5)
    second = channel.send(TITLE, BODY, "warning", timeout=5)

    assert isinstance(first, Failed) and isinstance(second, Delivered)
    assert len(webhook.wait_for(1)) == 1


def test_a_hanging_webhook_fails_within_the_send_timeout(webhook: WebhookReceiver) -> None:
    webhook.set_hang(10)
    channel = Channel("chat", webhook.apprise_url())

    started = time.monotonic()
    result = channel.send(TITLE, BODY, "warning", timeout=1)
    elapsed = time.monotonic() - started

    assert isinstance(result, Failed)
    assert elapsed < 2.0, elapsed


def test_nothing_listening_is_failed() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = Channel("chat", f"json://127.0.0.1:{port}/hook").send(TITLE, BODY, "info", timeout=2)
    assert isinstance(result, Failed) and not result.permanent


@pytest.mark.parametrize("url", ["nosuchscheme://example.com/x", "not a url", ""])
def test_an_unknown_url_fails_permanently(url: str) -> None:
    channel = Channel("bogus", url)

    result = channel.send(TITLE, BODY, "warning", timeout=1)

    assert channel.valid is False
    assert isinstance(result, Failed)
    assert result.permanent is True


def test_check_urls_names_the_channel_and_never_the_secret() -> None:
    problems = check_urls({"ok": "json://127.0.0.1:9/x",
                           "bad": "nosuchscheme://user:hunter2secret@example.com/x"})
    assert len(problems) == 1
    assert problems[0].startswith("channels[1].url:")
    assert "'bad'" in problems[0]
    assert "hunter2secret" not in problems[0]


def test_mail_is_delivered_with_the_title_as_subject(smtp: SmtpServer) -> None:
    channel = Channel("email", smtp.apprise_url(to="ops@example.com"))
    assert channel.valid

    result = channel.send(TITLE, BODY, "failure", timeout=10)

    assert result == Delivered()
    [mail] = smtp.wait_for(1)
    assert mail.subject == TITLE
    assert "remaining $9.00 is below $10.00" in mail.body
    assert mail.envelope_to == ("ops@example.com",)


def test_mail_refused_by_the_server_is_failed(smtp: SmtpServer) -> None:
    smtp.fail_next(1)
    channel = Channel("email", smtp.apprise_url())

    result = channel.send(TITLE, BODY, "warning", timeout=10)

    assert isinstance(result, Failed) and not result.permanent
    assert smtp.messages == []
