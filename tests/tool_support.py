"""Skips for a missing tool (browser, Orthanc, dcmtk, PostgreSQL...) or missing shared data.

They skip on a developer's machine, but when the environment has ``CI=true`` conftest.py's hooks
turn them into failures: a CI machine where ``make test`` could not install the tools must go red,
not green with half the system tests silently skipped. Intentional skips that are not about a
missing tool (too few cases in the data, no root for a tmpfs) call ``pytest.skip`` directly.
"""

from __future__ import annotations

import os

import pytest

MISSING = "missing tool or data: "
"""The prefix that marks a skip reason as a missing tool; conftest.py looks for it."""


def in_ci() -> bool:
    """True when the environment says this is CI (``CI=true``, as GitHub Actions and others set)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_missing(reason: str) -> None:
    """Skip the calling test (or module) because ``reason`` names something not installed."""
    pytest.skip(MISSING + reason, allow_module_level=True)


def skipif_missing(condition: bool, reason: str) -> pytest.MarkDecorator:
    """``pytest.mark.skipif`` for a missing tool (fails instead under CI=true)."""
    return pytest.mark.skipif(condition, reason=MISSING + reason)


def importorskip_tool(module: str, reason: str):
    """``pytest.importorskip`` for an optional package a test needs (fails instead under CI=true)."""
    return pytest.importorskip(module, reason=MISSING + reason)


def missing_reason(longrepr: object) -> str | None:
    """The skip reason of a skipped report when it is a missing-tool skip, else None."""
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = str(reason).removeprefix("Skipped: ")
    return reason.removeprefix(MISSING) if reason.startswith(MISSING) else None
