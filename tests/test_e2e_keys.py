"""Every key, every account, through the real CLI: per-key limits and spend from GET /keys
(all pages), two accounts told apart by their bearer key, and the guard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conftest import RunCli
from fakes import FakeOpenRouter, WebhookReceiver, key_item, write_settings

PROD_KEY = "sk-or-v1-prod-account-0011"
DEV_KEY = "sk-or-v1-dev-account-0011"
ENV = {"OPENROUTER_PROD_KEY": PROD_KEY, "OPENROUTER_DEV_KEY": DEV_KEY}
REF = re.compile(r"^ref: (\S+)$", re.MULTILINE)


def many_keys() -> list[dict[str, Any]]:
    """160 keys over two pages: ci-* keys with limits (a few nearly spent, some disabled),
    service keys without a limit, one big spender."""
    keys = []
    for i in range(120):
        spent = 4.8 if i % 40 == 7 else 1.0  # ci-7, ci-47, ci-87 have $0.20 of $5 left
        keys.append(key_item(f"ci-{i}", limit=5.0, usage_daily=spent, disabled=i % 50 == 49))
    for i in range(39):
        keys.append(key_item(f"svc-{i}", usage_daily=0.5))
    keys.append(key_item("svc-hungry", usage_daily=42.0))
    return keys


def settings(tmp_path: Path, api: FakeOpenRouter, hook: WebhookReceiver, extra: str = "",
             rules_extra: str = "") -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "5s"

        [database]
        url = "sqlite:///{tmp_path}/cw.db"

        {extra}

        [[accounts]]
        name = "prod"
        api_key_env = "OPENROUTER_PROD_KEY"

        [[accounts]]
        name = "dev"
        api_key_env = "OPENROUTER_DEV_KEY"

        [[channels]]
        name = "hook"
        url = "{hook.apprise_url()}"

        [[rules]]
        name = "low"
        type = "threshold"
        below = 10.0

        [[rules]]
        name = "key-near-limit"
        type = "key_limit"
        below_percent = 10
        keys = ["ci-*"]
        accounts = ["prod"]
        {rules_extra}

        [[rules]]
        name = "key-spend"
        type = "key_spend"
        period = "day"
        above = 20.0
        """)


def refs(hook: WebhookReceiver) -> list[str]:
    return [ref for m in hook.messages for ref in REF.findall(str(m["message"]))]


def test_per_key_alerts_on_every_page_and_two_accounts_apart(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, run_cli: RunCli) -> None:
    prod = fake_api.add_account(PROD_KEY, 100.0, 95.0, keys=many_keys())  # $5 left: low fires
    dev = fake_api.add_account(DEV_KEY, 100.0, 10.0, keys=[key_item("dev-1", usage_daily=1.0)])
    cfg = settings(tmp_path, fake_api, webhook)

    first = run_cli("check", config=cfg, env=ENV)
    assert first.code == 1, first  # warnings only
    # Every page was read, by offset, for prod (per-key rules apply) and for dev (key-spend).
    pages = [r.path for r in fake_api.requests if r.path.startswith("/api/v1/keys")]
    assert sorted(pages) == sorted(["/api/v1/keys?offset=0", "/api/v1/keys?offset=100",
                                    "/api/v1/keys?offset=0"]), pages
    fired = sorted(refs(webhook))
    # ci-7 and ci-87 are on page 1 and 2 (most recent first); ci-47 is on page 2; ci-49 and
    # ci-99 are disabled (skipped); keys without a limit never fire key_limit.
    assert fired == sorted([
        "prod/low#1/first",
        "prod/key-near-limit[ci-7~" + _id(prod, "ci-7") + "]#1/first",
        "prod/key-near-limit[ci-47~" + _id(prod, "ci-47") + "]#1/first",
        "prod/key-near-limit[ci-87~" + _id(prod, "ci-87") + "]#1/first",
        "prod/key-spend[svc-hungry~" + _id(prod, "svc-hungry") + "]#1/first",
    ]), fired
    titles = {m["title"] for m in webhook.messages}
    assert "[WARNING] prod: key-near-limit, ci-7, $0.20 of $5.00 left" in titles, titles
    [ci7] = [m for m in webhook.messages if "ci-7," in m["title"]]
    assert "Key: ci-7 (sk-or-v1-" in ci7["message"] and "Keys: https://openrouter.ai/settings/keys" in ci7["message"]
    assert "prod/low (warning)" in first.stdout and "dev: $90.00 remaining" in first.stdout
    for m in webhook.messages:  # never the full hash, in any message
        assert not any(item["hash"] in str(m) for item in prod.keys)

    # status --json: both accounts, each with its figures and keys.
    doc = json.loads(run_cli("status", "--json", config=cfg).stdout)
    assert [a["account"] for a in doc["accounts"]] == ["prod", "dev"]
    assert doc["accounts"][0]["remaining"] == 5.0 and doc["accounts"][1]["remaining"] == 90.0
    assert len(doc["accounts"][0]["keys"]) == 158  # 160 listed, 2 disabled
    hungry = next(k for k in doc["accounts"][0]["keys"] if k["name"] == "svc-hungry")
    assert hungry["usage_daily"] == 42.0 and "hash" not in hungry
    assert {a["key"].split(" ")[0] for a in doc["alerts"] if a.get("key")} == {
        "ci-7", "ci-47", "ci-87", "svc-hungry"}

    # ci-7 is topped up, ci-47 is disabled, ci-87 is deleted: all three resolve; dev's key
    # starts spending: its account alerts on its own.
    items = [k for k in prod.keys if k["name"] != "ci-87"]
    for item in items:
        if item["name"] == "ci-7":
            item.update(limit_remaining=4.0, usage_daily=1.0)
        if item["name"] == "ci-47":
            item["disabled"] = True
    prod.set_keys(items)
    dev.set_keys([key_item("dev-1", usage_daily=25.0)])
    webhook_before = len(webhook.messages)
    again = run_cli("check", config=cfg, env=ENV)
    assert again.code == 1, again
    later = sorted(refs(webhook)[webhook_before:])
    assert [r.split("#")[0].split("~")[0] for r in later] == sorted([
        "prod/key-near-limit[ci-7", "prod/key-near-limit[ci-47", "prod/key-near-limit[ci-87",
        "dev/key-spend[dev-1"]), later
    assert sum(r.endswith("/resolved") for r in later) == 3

    history = run_cli("history", "--account", "dev", "--format", "json", config=cfg)
    assert [r["remaining"] for r in json.loads(history.stdout)] == [90.0, 90.0]
    unknown = run_cli("history", "--account", "nope", config=cfg)
    assert unknown.code == 64 and "no account named 'nope'" in unknown.stderr


def _id(account: Any, name: str) -> str:
    from worker.domain import key_id

    return key_id(account.key(name)["hash"])[:6]


def test_the_guard_dry_run_changes_nothing_and_its_real_run_sends_one_patch(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, run_cli: RunCli) -> None:
    prod = fake_api.add_account(PROD_KEY, 100.0, 10.0, keys=[
        key_item("ci-runaway", limit=5.0, usage_daily=4.9), key_item("ci-fine", limit=5.0)])
    fake_api.add_account(DEV_KEY, 100.0, 10.0)
    dry = settings(tmp_path, fake_api, webhook, rules_extra="disable_keys = true")

    first = run_cli("check", config=dry, env=ENV)
    assert first.code == 1, first
    assert fake_api.patches == [] and not prod.key("ci-runaway")["disabled"]
    [message] = [m for m in webhook.messages if "key-near-limit" in m["title"]]
    assert "Guard (dry run): creditwatch would disable this key" in message["message"]

    # For real now: a key that newly fires is disabled with exactly one PATCH.
    prod.add_keys(key_item("ci-second", limit=5.0, usage_daily=4.95))
    real = settings(tmp_path, fake_api, webhook, extra="[guard]\ndry_run = false",
                    rules_extra="disable_keys = true")
    assert run_cli("check", config=real, env=ENV).code == 1
    [patch] = fake_api.patches
    assert patch.method == "PATCH" and patch.path == f"/api/v1/keys/{prod.key('ci-second')['hash']}"
    assert json.loads(patch.body) == {"disabled": True}
    assert patch.header("Authorization") == f"Bearer {PROD_KEY}"
    assert prod.key("ci-second")["disabled"] and not prod.key("ci-runaway")["disabled"]
    [second] = [m for m in webhook.messages if "ci-second" in m["title"]]
    assert "Guard: creditwatch disabled this key" in second["message"]
    # The disabled key drops out of GET /keys: its alert resolves; no second PATCH.
    assert run_cli("check", config=real, env=ENV).code == 1
    assert len(fake_api.patches) == 1
    assert any(r.endswith("/resolved") and "ci-second" in r for r in refs(webhook))
