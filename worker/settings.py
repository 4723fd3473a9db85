"""Settings: strict TOML -> pydantic models, ${VAR} expansion, cross-checks.

`parse_settings(text, environ)` is pure: it reads no file and no environment of
its own, and reports every problem as one `path: message` line.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.domain import Severity
from worker.durations import DurationError, format_duration, parse_duration

DEFAULT_FETCH_RULE = "fetch-failing"
_VAR = re.compile(r"\$\{([^}]*)\}|\$\$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SettingsError(Exception):
    """Settings that cannot be used; `problems` holds one `path: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        msg = 'expected a duration string such as "30s", "5m" or "1h30m"'
        raise ValueError(msg)
    try:
        return parse_duration(value)
    except DurationError as err:
        raise ValueError(err.reason) from None


Duration = Annotated[
    timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)
]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        msg = "must be a finite number"
        raise ValueError(msg)
    return value


def _strict_number(value: object) -> object:
    # TOML booleans are not amounts, though Python treats True as 1.
    if isinstance(value, bool):
        msg = "expected a number, not a boolean"
        raise ValueError(msg)
    return value


Amount = Annotated[float, BeforeValidator(_strict_number), Field(ge=0, le=1e12)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class OpenRouter(_Model):
    base_url: str = "https://openrouter.ai/api/v1"
    api_key_env: str = "OPENROUTER_API_KEY"
    timeout: Duration = timedelta(seconds=10)

    @field_validator("base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = "must be an http(s) URL such as https://openrouter.ai/api/v1"
            raise ValueError(msg)
        if parts.username or parts.password:
            msg = "must not carry credentials; the key comes from api_key_env"
            raise ValueError(msg)
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            msg = "must use https unless the host is loopback (the key would travel in clear)"
            raise ValueError(msg)
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            msg = "must be the name of an environment variable, such as OPENROUTER_API_KEY"
            raise ValueError(msg)
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout_bound(cls, value: timedelta) -> timedelta:
        if value > timedelta(minutes=10):
            msg = "must be at most 10m"
            raise ValueError(msg)
        return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Schedule(_Model):
    interval: Duration = timedelta(minutes=5)


class Database(_Model):
    url: SecretStr = SecretStr("sqlite:///creditwatch.db")
    keep_raw: Duration = timedelta(days=30)
    keep_rollups: Duration = timedelta(days=730)

    @field_validator("url")
    @classmethod
    def _looks_like_url(cls, value: SecretStr) -> SecretStr:
        if "://" not in value.get_secret_value():
            msg = "must be an SQLAlchemy URL such as sqlite:///creditwatch.db"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _rollups_outlive_raw(self) -> Database:
        if self.keep_rollups < self.keep_raw:
            msg = "keep_rollups must be at least as long as keep_raw"
            raise ValueError(msg)
        return self


class Alerts(_Model):
    repeat_interval: Duration = timedelta(hours=6)
    send_resolved: Annotated[bool, Field(strict=True)] = True


class Forecast(_Model):
    window: Duration = timedelta(hours=6)


class Channel(_Model):
    name: str
    url: SecretStr

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        if "://" not in value.get_secret_value():
            msg = "must be an apprise URL such as slack://... or mailtos://..."
            raise ValueError(msg)
        return value


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        msg = "must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        raise ValueError(msg)
    return value


class _Rule(_Model):
    # No populate_by_name: it would accept `for_` in the file as a silent alias of `for`.
    name: str
    severity: Severity = Severity.WARNING
    channels: tuple[str, ...] | None = None
    for_: Duration | None = Field(default=None, alias="for")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("channels")
    @classmethod
    def _some_channel(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            msg = "must name at least one channel (leave it out to notify every channel)"
            raise ValueError(msg)
        return value

    @property
    def pending_for(self) -> timedelta:
        return self.for_ or timedelta(0)


class ThresholdRule(_Rule):
    type: Literal["threshold"]
    below: Amount | None = None
    below_percent: Annotated[float, BeforeValidator(_strict_number), Field(gt=0, le=100)] | None = (
        None
    )
    clear_above: Amount | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> ThresholdRule:
        if (self.below is None) == (self.below_percent is None):
            msg = "give exactly one of below (USD) or below_percent"
            raise ValueError(msg)
        if self.clear_above is not None and self.below is not None and self.clear_above < self.below:
            msg = "clear_above must be at least below"
            raise ValueError(msg)
        return self


class BurnRateRule(_Rule):
    type: Literal["burn_rate"]
    window: Duration
    short_window: Duration | None = None
    above: Annotated[float, BeforeValidator(_strict_number), Field(gt=0, le=1e12)]

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnRateRule:
        if self.short_window is not None and self.short_window >= self.window:
            msg = "short_window must be shorter than window"
            raise ValueError(msg)
        return self


class RunwayRule(_Rule):
    type: Literal["runway"]
    window: Duration
    below: Duration


class FetchFailureRule(_Rule):
    type: Literal["fetch_failure"]
    severity: Severity = Severity.WARNING
    consecutive: Annotated[int, BeforeValidator(_strict_number), Field(strict=True, ge=1, le=10_000)] = 3


Rule = Annotated[
    ThresholdRule | BurnRateRule | RunwayRule | FetchFailureRule, Field(discriminator="type")
]
RULE_TYPES = ("threshold", "burn_rate", "runway", "fetch_failure")


class Settings(_Model):
    openrouter: OpenRouter = OpenRouter()
    schedule: Schedule = Schedule()
    database: Database = Database()
    alerts: Alerts = Alerts()
    forecast: Forecast = Forecast()
    channels: tuple[Channel, ...] = ()
    rules: tuple[Rule, ...] = ()

    def channels_for(self, rule: _Rule) -> tuple[str, ...]:
        """The channels a rule notifies: its own list, or every channel."""
        if rule.channels is None:
            return tuple(c.name for c in self.channels)
        return rule.channels

    def channel(self, name: str) -> Channel | None:
        return next((c for c in self.channels if c.name == name), None)

    @property
    def history_span(self) -> timedelta:
        """How far back any rule or the status forecast looks."""
        spans = [self.forecast.window]
        spans += [r.window for r in self.rules if isinstance(r, BurnRateRule | RunwayRule)]
        return max(spans)


def parse_settings(text: str, environ: Mapping[str, str]) -> Settings:
    """Parse, expand, validate and cross-check settings text; raise SettingsError."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError([f"settings: not valid TOML: {err}"]) from None
    problems: list[str] = []
    expanded = _expand(raw, environ, "", problems)
    # Report every problem at once: a value whose variable is unset is not judged again.
    unset = {line.split(": ", 1)[0] for line in problems}
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as err:
        problems += [line for line in _describe(err) if line.split(": ", 1)[0] not in unset]
    problems += [line for line in _cross_check(expanded) if line.split(": ", 1)[0] not in unset]
    if problems or settings is None:
        raise SettingsError(problems or ["settings: invalid"])
    return _with_default_fetch_rule(settings)


def _expand(node: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, environ, _join(path, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, environ, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _VAR.sub(lambda m: _lookup(m, environ, path, problems), node)
    return node


def _lookup(match: re.Match[str], environ: Mapping[str, str], path: str, problems: list[str]) -> str:
    if match.group(0) == "$$":
        return "$"
    name = match.group(1)
    if not _ENV_NAME.match(name):
        problems.append(f"{path}: '${{{name}}}' is not a valid environment variable reference")
        return ""
    if name not in environ:
        problems.append(f"{path}: environment variable {name} is not set")
        return ""
    return environ[name]


def _join(path: str, key: str) -> str:
    key = _shown_key(key)
    return f"{path}{key}" if key.startswith("[") else (f"{path}.{key}" if path else key)


def _shown_key(key: str) -> str:
    """A key as the path shows it: bare when plain, else quoted and escaped on one line."""
    return key if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"


def _describe(err: ValidationError) -> list[str]:
    lines = []
    for item in err.errors(include_input=False, include_url=False):
        loc = _clean_loc(item["loc"])
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "type")
        lines.append(f"{_format_loc(loc)}: {_message(item)}")
    return lines or ["settings: invalid"]


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # A discriminated union puts the tag in the path: rules.0.threshold.below.
    if len(loc) >= 3 and loc[0] == "rules" and loc[2] in RULE_TYPES:
        return loc[:2] + loc[3:]
    return loc


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out or "settings"


def _message(item: Any) -> str:
    kind = item["type"]
    if kind == "union_tag_invalid":
        return f"unknown rule type {item['ctx']['tag']!r} (expected one of {', '.join(RULE_TYPES)})"
    if kind == "union_tag_not_found":
        return f"missing 'type' (one of {', '.join(RULE_TYPES)})"
    if kind == "extra_forbidden":
        return "unknown setting"
    if kind == "missing":
        return "required setting is missing"
    msg = str(item["msg"])
    return msg.removeprefix("Value error, ")


def _cross_check(doc: Any) -> list[str]:
    """Names unique and channels defined, judged on the raw document so that these
    problems show up beside any validation errors."""
    channels = _named_tables(doc, "channels")
    rules = _named_tables(doc, "rules")
    problems = _duplicates("channels", [t.get("name") for t in channels])
    problems += _duplicates("rules", [t.get("name") for t in rules])
    known = {t.get("name") for t in channels if isinstance(t.get("name"), str)}
    for i, rule in enumerate(rules):
        wanted = rule.get("channels")
        for j, name in enumerate(wanted if isinstance(wanted, list) else []):
            if isinstance(name, str) and name not in known:
                problems.append(f"rules[{i}].channels[{j}]: undefined channel {name!r}")
    return problems


def _named_tables(doc: Any, section: str) -> list[dict[str, Any]]:
    items = doc.get(section) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return []
    return [t if isinstance(t, dict) else {} for t in items]


def _duplicates(section: str, names: list[Any]) -> list[str]:
    seen: set[str] = set()
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(f"{section}[{i}].name: duplicate name {name!r}")
        seen.add(name)
    return problems


def _with_default_fetch_rule(settings: Settings) -> Settings:
    if any(isinstance(r, FetchFailureRule) for r in settings.rules):
        return settings
    default = FetchFailureRule(
        type="fetch_failure", name=DEFAULT_FETCH_RULE, consecutive=3, severity=Severity.CRITICAL
    )
    if any(r.name == DEFAULT_FETCH_RULE for r in settings.rules):
        problems = [(f"rules: a rule named {DEFAULT_FETCH_RULE!r} that is not fetch_failure hides "
                    "the default fetch_failure rule; rename it or add a fetch_failure rule")]
        raise SettingsError(problems)
    return settings.model_copy(update={"rules": (*settings.rules, default)})
