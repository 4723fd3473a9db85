"""`config check`: the resolved settings as TOML, every secret redacted.

The sections come from the Settings model itself, so a new section can never be left out
silently; a secret field (SecretStr) is shown through its view below, or as the mask when
it has none, so a new secret can never be printed in clear.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, SecretStr

from worker.db import redacted_url
from worker.heartbeat import shown_url
from worker.redact import MASK, Redactor, inspect_url
from worker.settings import Settings

HEADER = "# creditwatch settings, resolved (${VAR} expanded, defaults filled in, secrets redacted)"
# How each secret setting may be shown ("section.field"); scheme, host and port stay visible.
_SECRET_VIEWS: dict[str, Callable[[str], str]] = {
    "database.url": redacted_url,  # the password masked, the rest as written
    "heartbeat.url": shown_url,  # scheme and host only: the path is the secret
    "channels.url": lambda url: inspect_url(url).shown,  # each secret part masked (worker.redact)
}


def render_settings(settings: Settings, key_set: bool, redact: Redactor) -> str:
    """TOML that parses back to the same settings, but with secrets masked."""
    lines = [HEADER]
    tables: list[str] = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            tables += ["", f"[{name}]", *_pairs(_table(name, value, redact))]
        elif isinstance(value, tuple):
            for item in value:
                tables += ["", f"[[{name}]]", *_pairs(_table(name, item, redact))]
        else:  # a bare value must come before the first table in TOML
            lines += _pairs({name: settings.model_dump(mode="json", include={name})[name]})
    state = "set" if key_set else "NOT SET: run and check will refuse to start"
    return "\n".join(_annotate(lines + tables, "[openrouter]", "api_key_env = ", f"  # {state}"))


def _table(section: str, model: BaseModel, redact: Redactor) -> dict[str, Any]:
    """One table's keys as written in the file; every secret through its view, redacted."""
    doc: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            view = _SECRET_VIEWS.get(f"{section}.{name}")
            doc[info.alias or name] = redact(view(value.get_secret_value())) if view else MASK
    return doc


def _annotate(lines: list[str], section: str, prefix: str, comment: str) -> list[str]:
    """`lines` with `comment` after the first line starting with `prefix` inside `section`."""
    out, inside, done = [], False, False
    for line in lines:
        inside = (line == section) if line.startswith("[") else inside
        if inside and not done and line.startswith(prefix):
            line, done = line + comment, True
        out.append(line)
    return out


def _pairs(table: dict[str, Any]) -> list[str]:
    return [f"{_key(k)} = {json.dumps(v, ensure_ascii=False)}" for k, v in table.items()]


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)
