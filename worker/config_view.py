"""`config check`: the resolved settings as TOML, every secret redacted."""

from __future__ import annotations

import json
from typing import Any

from worker.db import redacted_url
from worker.redact import Redactor, inspect_url
from worker.settings import Settings

_SECTIONS = ("openrouter", "schedule", "database", "alerts", "forecast")


def render_settings(settings: Settings, key_set: bool, redact: Redactor) -> str:
    """TOML that parses back to the same settings, but with secrets masked."""
    doc = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["database"]["url"] = redact(redacted_url(settings.database.url.get_secret_value()))
    lines = ["# creditwatch settings, resolved (${VAR} expanded, defaults filled in, secrets redacted)"]
    for section in _SECTIONS:
        lines += ["", f"[{section}]", *_pairs(doc[section])]
        if section == "openrouter":
            state = "set" if key_set else "NOT SET: run and check will refuse to start"
            lines[-2] += f"  # {state}"
    for channel in settings.channels:
        # Scheme, host and port as written, every secret part masked (see worker.redact).
        url = redact(inspect_url(channel.url.get_secret_value()).shown)
        lines += ["", "[[channels]]", *_pairs({"name": channel.name, "url": url})]
    for rule in doc["rules"]:
        lines += ["", "[[rules]]", *_pairs(rule)]
    return "\n".join(lines)


def _pairs(table: dict[str, Any]) -> list[str]:
    return [f"{_key(k)} = {json.dumps(v, ensure_ascii=False)}" for k, v in table.items()]


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)
