"""The errors a command ends with, and the exit code of each: plain values, shared by every layer."""

from __future__ import annotations

from collections.abc import Sequence

EX_FAILURE = 1  # a command failed at run time (database down...)
EX_USAGE = 64  # a command-line mistake (BSD sysexits EX_USAGE)
EX_CONFIG = 78  # unusable settings (BSD sysexits EX_CONFIG)


class UsageError(Exception):
    """A command-line mistake: one line, exit 64."""


class ConfigError(Exception):
    """Unusable settings: one `path: message` line per problem, exit 78."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class RuntimeProblem(Exception):
    """Something outside the user's settings went wrong (database down...): one line."""
