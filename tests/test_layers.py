"""Every module of the package belongs to exactly one layer of `.importlinter`, so a new
module cannot slip past the layer contracts that `make test` checks with lint-imports."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = "importlinter:contract:"


def _modules(section: configparser.SectionProxy, key: str) -> set[str]:
    return {line.strip() for line in section[key].splitlines() if line.strip()}


def test_every_module_is_in_exactly_one_layer() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    core = _modules(config[CONTRACTS + "core-is-pure"], "source_modules")
    edges = _modules(config[CONTRACTS + "edges-never-import-the-shell"], "source_modules")
    shell = _modules(config[CONTRACTS + "edges-never-import-the-shell"], "forbidden_modules")
    assert _modules(config[CONTRACTS + "core-does-no-io"], "source_modules") == core
    assert _modules(config[CONTRACTS + "core-is-pure"], "forbidden_modules") == edges | shell
    assert not (core & edges or core & shell or edges & shell)
    package = ROOT / "worker"
    found = {f"worker.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    found |= {f"worker.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists()
              and p.name != "migrations"}
    found -= {"worker.rules." + p.stem for p in (package / "rules").glob("*.py")}
    assert found == core | edges | shell, (sorted(found - (core | edges | shell)),
                                            sorted((core | edges | shell) - found))
