"""Application Entity titles: 1-16 characters of the default repertoire, no backslash."""

from __future__ import annotations

from xraytriage.errors import ConfigError


def validate_ae_title(title: str, what: str = "AE title") -> str:
    """The title stripped of surrounding spaces; ConfigError naming ``what`` when it is invalid."""
    if not isinstance(title, str):
        raise ConfigError(f"{what} must be text, got {type(title).__name__}")
    stripped = title.strip()
    if not stripped:
        raise ConfigError(f"{what} is empty")
    if len(stripped) > 16:
        raise ConfigError(f"{what} {stripped!r} is longer than 16 characters")
    if "\\" in stripped or any(not (32 <= ord(ch) < 127) for ch in stripped):
        raise ConfigError(f"{what} {stripped!r} may only hold printable ASCII without backslash")
    return stripped
