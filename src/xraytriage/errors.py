"""Typed errors. Every error about an input file names the file and the problem, so batch code
can turn it into an error row and carry on."""

from __future__ import annotations

from pathlib import Path


class XRayTriageError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(XRayTriageError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class ImageReadError(XRayTriageError):
    """A file could not be turned into a radiograph.

    ``str(error)`` reads ``"<path>: <problem>"``; ``error.path`` and ``error.problem`` keep both.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep picklable for worker processes
        return (type(self), (self.path, self.problem))


class UnreadableImageError(ImageReadError):
    """Empty, truncated, corrupt or not an image at all."""


class UnsupportedModalityError(ImageReadError):
    """A DICOM object that is not a projection radiograph (CT, MR, ...)."""


class NoPixelDataError(ImageReadError):
    """A DICOM object without pixel data (a structured report, a presentation state...)."""


class ImageTooLargeError(ImageReadError):
    """Declared image size exceeds the decompression-bomb limit."""
