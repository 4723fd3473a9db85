"""The watching-the-watcher settings: `[server] listen`, `[heartbeat] url` (a secret) and
`[logging] format`; old files stay valid, every problem is one `path: message` line, and
`config check` shows every section of the model with the heartbeat URL masked."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import Cli
from fakes import FakeOpenRouter, make_settings

from worker.settings import Settings, SettingsError, parse_settings

KEY = "sk-or-v1-settings-watch-0010"
TOKEN = "5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278"


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(text, environ or {})
    return caught.value.problems


def test_old_settings_files_stay_valid_and_change_nothing() -> None:
    settings = parse_settings('[schedule]\ninterval = "1m"\n', {})

    assert settings.server.address is None
    assert settings.heartbeat.url is None
    assert settings.logging.format == "text"


@pytest.mark.parametrize(("listen", "address"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9464", ("::1", 9464)),
    ("[::]:1", ("::", 1)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ("localhost:9464", ("localhost", 9464)),
    ("metrics.internal.example:80", ("metrics.internal.example", 80)),
])
def test_listen_addresses(listen: str, address: tuple[str, int]) -> None:
    assert parse_settings(f'[server]\nlisten = "{listen}"\n', {}).server.address == address


@pytest.mark.parametrize("listen", [
    "9464", ":9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
    "::1:9464", "[::1]", "[127.0.0.1]:9464", "[::1:9464", "bad host:9464", "-bad:9464",
    "127.0.0.1:\uff19\uff14\uff16\uff14", "",  # full-width digits
])
def test_a_bad_listen_address_is_one_line(listen: str) -> None:
    [line] = problems(f'[server]\nlisten = "{listen}"\n')

    assert line.startswith("server.listen: must ") and "9464" in line, line


@pytest.mark.parametrize("url", [
    "https://hc-ping.com/" + TOKEN, "http://127.0.0.1:8000/ping/" + TOKEN, "https://hc.example.com/",
])
def test_heartbeat_urls(url: str) -> None:
    settings = parse_settings('[heartbeat]\nurl = "${HEARTBEAT_URL}"\n', {"HEARTBEAT_URL": url})

    assert settings.heartbeat.url is not None and settings.heartbeat.url.get_secret_value() == url
    assert TOKEN not in repr(settings) + str(settings.model_dump())


@pytest.mark.parametrize("url", [
    f"ftp://hc-ping.com/{TOKEN}", f"hc-ping.com/{TOKEN}", f"https:///{TOKEN}", f"https://hc-ping.com/{TOKEN}?x=1",
    f"https://hc-ping.com/{TOKEN}#frag", f"https://hc-ping.com/{TOKEN} ", f"https://hc-ping.com:0/{TOKEN}",
    f"https://[::1/{TOKEN}",
])
def test_a_bad_heartbeat_url_is_one_line_that_never_quotes_it(url: str) -> None:
    [line] = problems('[heartbeat]\nurl = "${HEARTBEAT_URL}"\n', {"HEARTBEAT_URL": url})

    assert line.startswith("heartbeat.url: must "), line
    assert TOKEN not in line


def test_logging_format() -> None:
    assert parse_settings('[logging]\nformat = "json"\n', {}).logging.format == "json"
    [line] = problems('[logging]\nformat = "xml"\n')
    assert line.startswith("logging.format: "), line
    [line] = problems('[logging]\nformat = "json"\nlevel = "DEBUG"\n')
    assert line == "logging.level: unknown setting"


def test_config_check_shows_every_section_and_masks_the_heartbeat(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    url = f"https://hc-ping.com/{TOKEN}"
    cfg = make_settings(tmp_path, fake_api, channels={"chat": "json://127.0.0.1:9/hook"},
                        extra='[server]\nlisten = "[::1]:9464"\n[heartbeat]\nurl = "${HEARTBEAT_URL}"\n'
                              '[logging]\nformat = "json"\n[guard]\ndry_run = true\n'
                              '[[accounts]]\nname = "prod"\napi_key_env = "OPENROUTER_API_KEY"\n')

    result = cli(cfg, "config", "check", env={"HEARTBEAT_URL": url})

    assert result.code == 0, result
    assert TOKEN not in result.stdout + result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["heartbeat"]["url"] == "https://hc-ping.com/***"
    assert shown["server"]["listen"] == "[::1]:9464"
    assert shown["logging"]["format"] == "json"
    # Derived from the model: no section of Settings can be left out of config check.
    assert set(shown) == set(Settings.model_fields), set(Settings.model_fields) ^ set(shown)
    # What it prints parses back (masked values aside) to the same settings.
    shown["heartbeat"]["url"] = url
    shown["channels"][0]["url"] = "json://127.0.0.1:9/hook"
    again = Settings.model_validate(shown)
    original = parse_settings(cfg.read_text(), {"HEARTBEAT_URL": url})
    assert again.model_dump(exclude={"database"}) == original.model_dump(exclude={"database"})
