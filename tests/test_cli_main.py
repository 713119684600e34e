"""The CLI's command table and its one logging set-up."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest

import xraytriage.cli as cli_package
from xraytriage.cli.main import COMMANDS, build_parser, main
from xraytriage.errors import ConfigError
from xraytriage.logconfig import configure_logging


@pytest.fixture
def root_logging():
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)


def test_every_command_module_is_in_the_table():
    """A module in cli/ that can register commands but is missing from COMMANDS is a command
    nobody can run."""
    registering = {
        f"xraytriage.cli.{info.name}"
        for info in pkgutil.iter_modules(cli_package.__path__)
        if hasattr(importlib.import_module(f"xraytriage.cli.{info.name}"), "register")
    }
    assert registering == set(COMMANDS)


def test_subcommand_names_are_kept():
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    assert list(sub.choices) == [
        "backup", "restore", "calibrate", "datasets", "demo", "dicom-echo", "evaluate", "compare", "explain", "localize-eval",
        "export", "localiser", "models", "serve", "train", "cv", "triage", "import-weights",
    ]  # fmt: skip


def test_a_later_call_changes_the_level(root_logging):
    configure_logging("info")
    assert not logging.getLogger("xraytriage.serving.worker").isEnabledFor(logging.DEBUG)
    configure_logging("debug", timestamps=True)
    assert logging.getLogger("xraytriage.serving.worker").isEnabledFor(logging.DEBUG)
    configure_logging("error")
    assert not logging.getLogger("xraytriage.triage.engine").isEnabledFor(logging.WARNING)
    with pytest.raises(ConfigError, match="log level"):
        configure_logging("loud")


def test_serve_log_level_reaches_the_project_loggers(root_logging, tmp_path, monkeypatch):
    """``serve --log-level debug`` used to be ignored: main() had already configured logging."""
    import uvicorn

    import xraytriage.serving

    seen = {}

    def fake_run(app, **kwargs):
        seen["debug"] = logging.getLogger("xraytriage.serving.worker").isEnabledFor(logging.DEBUG)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(xraytriage.serving, "create_app", lambda config: object())
    assert main(["serve", "--log-level", "debug", "--data-dir", str(tmp_path / "serve")]) == 0
    assert seen == {"debug": True}
