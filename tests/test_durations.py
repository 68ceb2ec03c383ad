"""One grammar for the durations a user types (flags and settings), and how they are
written for the runner and for coreutils' `timeout` (issue 22)."""

from __future__ import annotations

import pytest

from patchbay_vm_tasks import durations
from patchbay_vm_tasks.errors import EXIT_USAGE, UsageError


@pytest.mark.parametrize(
    ("text", "seconds", "runner", "timeout"),
    [
        ("300", 300.0, "300s", "300s"),
        (" 90s ", 90.0, "90s", "90s"),
        ("500ms", 0.5, "500ms", "0.5s"),
        ("1.5m", 90.0, "90s", "90s"),
        ("10m", 600.0, "600s", "600s"),
        ("1h", 3600.0, "3600s", "3600s"),
        ("1d", 86400.0, "86400s", "86400s"),
        ("0.0015s", 0.0015, "2ms", "0.0015s"),  # the runner counts whole ms: rounded up
        ("7d", 604800.0, "604800s", "604800s"),
    ],
)
def test_durations_and_their_spellings(text, seconds, runner, timeout) -> None:
    assert durations.parse(text, "--timeout") == seconds
    assert durations.for_runner(seconds) == runner
    assert durations.for_timeout(seconds) == timeout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--timeout: expected a duration such as 300, 500ms, 90s, 1.5m, 10m or 1h, got ''"),
        ("10 m", "expected a duration"),
        ("1h30m", "expected a duration"),
        ("-5s", "expected a duration"),
        ("1e3", "expected a duration"),
        ("nan", "expected a duration"),
        ("٣s", "expected a duration"),
        ("9" * 400, "--timeout: '999999999999999999999999999999999999...' is over the limit"),
        ("0", "--timeout: must be more than zero, got '0'"),
        ("0.0ms", "must be more than zero"),
        ("8d", "--timeout: '8d' is over the limit of 7 days"),
        (None, "expected a duration"),
    ],
)
def test_bad_durations(text, message) -> None:
    with pytest.raises(UsageError) as e:
        durations.parse(text, "--timeout")
    assert message in str(e.value) and len(str(e.value)) < 200
    assert e.value.exit_code == EXIT_USAGE
