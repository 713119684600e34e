"""One logging set-up for every command: ``configure_logging(level)``.

Called by ``cli.main`` for every command (``-v`` = debug) and again by ``serve`` with its
``--log-level``, so a later call changes the level of the project's loggers (``logging.
basicConfig`` does nothing the second time, which is how ``serve --log-level debug`` used to
be ignored). Like ``basicConfig`` it adds its stderr handler only when the application (or a
test runner) has not installed handlers of its own.
"""

from __future__ import annotations

import logging

from xraytriage.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error")
_HANDLER = "xraytriage"
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_TIMED_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHATTY_LIBRARIES = ("alembic",)
"""Libraries whose INFO lines say nothing to a user (alembic: about ten at every service start,
some while it is imported); shown only with debug logging."""


def configure_logging(level: str | int = "info", *, timestamps: bool = False) -> None:
    """Set the level of the root logger (and so of every ``xraytriage.*`` logger) and the
    format of this package's stderr handler; ``timestamps`` for long-running servers."""
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        level = getattr(logging, level.upper())
    root = logging.getLogger()
    formatter = logging.Formatter(_TIMED_FORMAT if timestamps else _FORMAT)
    ours = [h for h in root.handlers if h.get_name() == _HANDLER]
    if ours:
        ours[0].setFormatter(formatter)
    elif not root.handlers:
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(
            logging.NOTSET if level <= logging.DEBUG else max(level, logging.WARNING)
        )
