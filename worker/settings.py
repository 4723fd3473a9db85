"""Settings: strict TOML -> pydantic models, ${VAR} expansion, cross-checks.

`parse_settings(text, environ)` is pure: it reads no file and no environment of
its own, and reports every problem as one `path: message` line.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from worker.domain import Severity
from worker.rules import (
    REGISTRY,
    BurnRateRule,
    FetchFailureRule,
    RunwayRule,
    ThresholdRule,
    history_span,
)
from worker.settings_base import DEFAULT_ACCOUNT, Duration, Model, RuleBase, check_name
from worker.settings_checks import (
    ENV_NAME,
    TOO_DEEP,
    Sourced,
    cross_check,
    describe,
    expand,
    key_problem,
    scrub,
    too_deep,
)
from worker.settings_checks import (
    SettingsError as SettingsError,  # re-exported: the error of parse_settings
)

DEFAULT_FETCH_RULE = "fetch-failing"
# The rule models, re-exported: settings are where a caller looks for them.
__all__ = ["DEFAULT_FETCH_RULE", "BurnRateRule", "FetchFailureRule", "Rule", "RunwayRule", "Settings",
           "SettingsError", "ThresholdRule", "parse_settings"]


class OpenRouter(Model):
    base_url: str = "https://openrouter.ai/api/v1"
    api_key_env: str = "OPENROUTER_API_KEY"
    timeout: Duration = timedelta(seconds=10)

    @field_validator("base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        parts = _split_base_url(value)
        if parts.username or parts.password:
            msg = "must not carry credentials; the key comes from api_key_env"
            raise ValueError(msg)
        if parts.scheme == "http" and not _is_loopback(str(parts.hostname)):
            msg = "must use https unless the host is loopback (the key would travel in clear)"
            raise ValueError(msg)
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not ENV_NAME.match(value):
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

    def key_problem(self, environ: Mapping[str, str]) -> str | None:
        """Why the API key in `environ` cannot be used (unset, empty, not printable ASCII), or None."""
        return key_problem(self.api_key_env, environ.get(self.api_key_env, ""))


def _split_base_url(value: str) -> SplitResult:
    """The base URL's parts, or ValueError with a message that never quotes the value."""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        msg = "must not contain spaces, tabs or other control characters"
        raise ValueError(msg)
    if "?" in value or "#" in value:
        msg = "must not have a query string or a #fragment; the paths below it are fixed"
        raise ValueError(msg)
    try:
        parts = urlsplit(value)
        port = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        msg = "must be an http(s) URL with a valid host and a port between 1 and 65535"
        raise ValueError(msg) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = "must be an http(s) URL such as https://openrouter.ai/api/v1"
        raise ValueError(msg)
    if port == 0:
        msg = "must have a port between 1 and 65535"
        raise ValueError(msg)
    return parts


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Schedule(Model):
    interval: Duration = timedelta(minutes=5)


class Database(Model):
    url: SecretStr = SecretStr("sqlite:///creditwatch.db")
    keep_raw: Duration = timedelta(days=30)
    keep_rollups: Duration = timedelta(days=730)
    # Client-side bound on every database call: a frozen server fails the tick within it.
    timeout: Duration = timedelta(seconds=10)

    @field_validator("timeout")
    @classmethod
    def _timeout_bound(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=5):
            msg = "must be between 1s and 5m"
            raise ValueError(msg)
        return value

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


class Alerts(Model):
    repeat_interval: Duration = timedelta(hours=6)
    send_resolved: Annotated[bool, Field(strict=True)] = True
    # One send, wall clock; a send past it is abandoned for good (its child process is killed).
    send_timeout: Duration = timedelta(seconds=10)
    # A message still undelivered this long after it was enqueued is dropped with an ERROR line.
    give_up_after: Duration = timedelta(hours=24)
    # How times read in messages (an IANA name such as "Europe/Paris").
    timezone: str = "UTC"
    # One message per channel and tick, holding every notification due for it.
    group: Annotated[bool, Field(strict=True)] = False
    # The balance chart attached to balance alerts, on channels that take attachments.
    attach_chart: Annotated[bool, Field(strict=True)] = False

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.timezone)

    @field_validator("send_timeout")
    @classmethod
    def _send_timeout_bound(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=2):
            msg = "must be between 1s and 2m"
            raise ValueError(msg)
        return value


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ValueError (naming no more than the setting) otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        msg = 'must be an IANA time zone name such as "UTC" or "Europe/Paris"'
        raise ValueError(msg) from None


class Digest(Model):
    """A summary message per period: `every` (from `at`, in [alerts] timezone) to `channels`."""

    every: Duration | None = None
    at: str = "09:00"
    channels: tuple[str, ...] | None = None
    attach_chart: Annotated[bool, Field(strict=True)] = True

    @field_validator("at")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        hours, _, minutes = value.partition(":")
        if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and int(hours) < 24
                and int(minutes) < 60):
            msg = 'must be a time of day such as "09:00"'
            raise ValueError(msg)
        return value

    @field_validator("every")
    @classmethod
    def _at_least_an_hour(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(hours=1):
            msg = 'must be at least "1h" (a digest is a summary, not an alert)'
            raise ValueError(msg)
        return value


class Forecast(Model):
    window: Duration = timedelta(hours=6)


class Server(Model):
    """Where `run` serves /healthz and /metrics; None serves nothing."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, the host without IPv6 brackets; None when not set."""
        return None if self.listen is None else split_listen(self.listen)


def split_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` as (host, port); ValueError with one message otherwise."""
    msg = 'must be host:port with a port between 1 and 65535, such as "127.0.0.1:9464" or "[::1]:9464"'
    host, colon, port = value.rpartition(":")
    if ":" in host and not host.startswith("["):
        msg = 'must put an IPv6 address in brackets, such as "[::1]:9464"'
        raise ValueError(msg)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid = _is_ip(host, version=6)
    else:
        valid = _is_ip(host, version=4) or bool(_HOSTNAME.fullmatch(host))
    if not (colon and valid and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(msg)
    return host, int(port)


_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


class Heartbeat(Model):
    """A dead-man switch pinged after every tick (healthchecks.io style); a secret."""

    url: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_heartbeat_url(value.get_secret_value())
        return value


def _check_heartbeat_url(url: str) -> None:
    """ValueError unless `url` is a plain http(s) URL; the message never quotes it (a secret)."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        msg = "must not contain spaces, tabs or other control characters"
        raise ValueError(msg)
    if "?" in url or "#" in url:
        msg = "must not have a query string or a #fragment: /fail is appended to its path"
        raise ValueError(msg)
    msg = "must be an http(s) URL with a host, such as https://hc-ping.com/<uuid>"
    try:
        parts = urlsplit(url)
        port = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(msg) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ValueError(msg)


class Logging(Model):
    format: Literal["text", "json"] = "text"


class Account(Model):
    """One OpenRouter account: its name in every output, and the variable holding its key."""

    name: str
    api_key_env: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            msg = "must be the name of an environment variable, such as OPENROUTER_PROD_KEY"
            raise ValueError(msg)
        return value

class Guard(Model):
    """Whether rules with `disable_keys = true` really disable keys (off unless dry_run = false)."""

    dry_run: Annotated[bool, Field(strict=True)] = True


class Channel(Model):
    name: str
    url: SecretStr

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        if "://" not in value.get_secret_value():
            msg = "must be an apprise URL such as slack://... or mailtos://..."
            raise ValueError(msg)
        return value


if TYPE_CHECKING:
    Rule = RuleBase
else:
    # The discriminated union of every registered rule type's model.
    Rule = Annotated[Union[tuple(t.model for t in REGISTRY.values())], Field(discriminator="type")]  # noqa: UP007


class Settings(Model):
    openrouter: OpenRouter = OpenRouter()
    schedule: Schedule = Schedule()
    database: Database = Database()
    alerts: Alerts = Alerts()
    forecast: Forecast = Forecast()
    server: Server = Server()
    heartbeat: Heartbeat = Heartbeat()
    logging: Logging = Logging()
    guard: Guard = Guard()
    digest: Digest = Digest()
    accounts: tuple[Account, ...] = ()
    channels: tuple[Channel, ...] = ()
    rules: tuple[Rule, ...] = ()

    @property
    def watched(self) -> tuple[Account, ...]:
        """The accounts watched: those of [[accounts]], else one named "default" whose key is
        [openrouter] api_key_env's."""
        return self.accounts or (Account(name=DEFAULT_ACCOUNT, api_key_env=self.openrouter.api_key_env),)

    @property
    def several_accounts(self) -> bool:
        """Whether [[accounts]] is in use: then every message and output names the account."""
        return bool(self.accounts)

    def rules_for(self, account: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.applies_to(account))

    def key_problems(self, environ: Mapping[str, str]) -> list[str]:
        """Why the API key of each watched account cannot be used (unset, empty, not printable
        ASCII), one line each naming the setting and the variable, never the value."""
        if not self.accounts:
            problem = self.openrouter.key_problem(environ)
            return [problem] if problem else []
        found = (key_problem(a.api_key_env, environ.get(a.api_key_env, ""), f"accounts[{i}].api_key_env")
                 for i, a in enumerate(self.accounts))
        return [p for p in found if p]

    def channels_for(self, rule: RuleBase) -> tuple[str, ...]:
        """The channels a rule notifies: its own list, or every channel."""
        if rule.channels is None:
            return tuple(c.name for c in self.channels)
        return rule.channels

    def channel(self, name: str) -> Channel | None:
        return next((c for c in self.channels if c.name == name), None)

    @property
    def history_span(self) -> timedelta:
        """How far back any rule or the status forecast looks."""
        return history_span(self.rules, self.forecast.window)


def parse_settings(text: str, environ: Mapping[str, str]) -> Settings:
    """Parse, expand, validate and cross-check settings text; raise SettingsError."""
    raw = _load_toml(text)
    problems: list[str] = []
    sourced: Sourced = {}
    expanded = expand(raw, environ, "", problems, sourced)
    # Report every problem at once: a value whose variable is unset is not judged again.
    unset = {line.split(": ", 1)[0] for line in problems}
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as err:
        problems += [line for line in describe(err, sourced) if line.split(": ", 1)[0] not in unset]
    problems += [line for line in cross_check(expanded, sourced)
                 if line.split(": ", 1)[0] not in unset]
    if problems or settings is None:
        raise SettingsError(scrub(problems, sourced) or ["settings: invalid"])
    return _with_default_fetch_rule(settings)


def _load_toml(text: str) -> dict[str, Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError([f"settings: not valid TOML: {err}"]) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table.
        raise SettingsError([TOO_DEEP]) from None
    if too_deep(raw):
        raise SettingsError([TOO_DEEP])
    return raw


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
