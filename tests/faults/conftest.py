"""The fault suite's marker and its summary table at the end of the run (shown without ``-s`` too)."""

from __future__ import annotations

import pytest

TABLE_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    # Also listed in pyproject.toml; registered here so the suite runs under --strict-markers either way.
    config.addinivalue_line("markers", "faults: kill -9 fault suite (processes, minutes)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for table in config.stash.get(TABLE_KEY, []):
        terminalreporter.write_sep("=", "fault suite figures")
        terminalreporter.write_line(table)
