"""The Nagios exit code of `check`: CRITICAL > WARNING > UNKNOWN > OK."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain import ExitCode, Severity
from worker.verdict import exit_code

FAST = settings(max_examples=200, deadline=None)
C, W, I = Severity.CRITICAL, Severity.WARNING, Severity.INFO


@pytest.mark.parametrize(
    ("firing", "fetch_ok", "expected"),
    [
        ([], True, ExitCode.OK),
        ([], False, ExitCode.UNKNOWN),
        ([I], True, ExitCode.OK),
        ([I, I, I], True, ExitCode.OK),
        ([I], False, ExitCode.UNKNOWN),
        ([W], True, ExitCode.WARNING),
        ([W], False, ExitCode.WARNING),
        ([W, I], True, ExitCode.WARNING),
        ([C], True, ExitCode.CRITICAL),
        ([C], False, ExitCode.CRITICAL),
        ([I, W, C], True, ExitCode.CRITICAL),
        ([C, W], False, ExitCode.CRITICAL),
    ],
)
def test_exit_code(firing: list[Severity], fetch_ok: bool, expected: ExitCode) -> None:
    assert exit_code(firing, fetch_ok) is expected


def test_exit_code_values_are_the_nagios_ones() -> None:
    assert (int(ExitCode.OK), int(ExitCode.WARNING), int(ExitCode.CRITICAL),
            int(ExitCode.UNKNOWN)) == (0, 1, 2, 3)


def test_exit_code_accepts_any_iterable_once() -> None:
    assert exit_code(iter([I, W]), True) is ExitCode.WARNING
    assert exit_code((s for s in [C]), True) is ExitCode.CRITICAL


RANK = {ExitCode.OK: 0, ExitCode.UNKNOWN: 1, ExitCode.WARNING: 2, ExitCode.CRITICAL: 3}


@FAST
@given(st.lists(st.sampled_from(list(Severity))), st.booleans())
def test_most_severe_wins(firing: list[Severity], fetch_ok: bool) -> None:
    code = exit_code(firing, fetch_ok)
    if C in firing:
        assert code is ExitCode.CRITICAL
    elif W in firing:
        assert code is ExitCode.WARNING
    elif not fetch_ok:
        assert code is ExitCode.UNKNOWN
    else:
        assert code is ExitCode.OK
    # Adding an info alert never changes the code; adding a worse one never lowers it.
    assert exit_code([*firing, I], fetch_ok) is code
    for extra in (W, C):
        assert RANK[exit_code([*firing, extra], fetch_ok)] >= RANK[code]
    # A failed fetch never lowers the code.
    assert RANK[exit_code(firing, False)] >= RANK[exit_code(firing, True)]
