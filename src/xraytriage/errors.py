"""Typed errors, all in this module. Every error about an input file names the file and the
problem, so batch code can turn it into an error row and carry on.

    XRayTriageError                 base of every error raised on purpose
    ├── ConfigError                 a bad setting (also a ValueError)
    │   └── MissingFileError        a file or folder the user named does not exist
    ├── PatientLeakError            a patient's images in more than one split
    └── ImageReadError(path, problem) and its kinds (unreadable, not a radiograph, too large...)
    StoreRefused(reason, status)    a DICOM image the node refuses for good (a C-STORE answer)

The web service's own (``serving``): refusals that become an HTTP status (``UploadRejected``,
``UploadError``, ``UnknownFinding``, ``HeatmapQueueFull``, ``TooLarge``), a full disk
(``StorageFull``, an ``OSError``), a state move the life cycle forbids (``IllegalTransition``), and
the repository's two signals inside one insert (``DuplicateImage``, ``SopConflict``).
"""

from __future__ import annotations

from pathlib import Path


class XRayTriageError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(XRayTriageError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class MissingFileError(ConfigError):
    """A file or folder the user named does not exist: ``"<path>: <what> not found"``.

    The one "not found" type for configs, checkpoints, label tables and dataset folders (an
    image that vanished during a batch is an :class:`UnreadableImageError` row instead).
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = str(path)
        self.what = what
        super().__init__(f"{self.path}: {what} not found")

    def __reduce__(self):
        return (type(self), (self.path, self.what))


class UnknownModelError(MissingFileError):
    """``--model`` names neither a checkpoint file nor a model it knows; the message lists
    the names it accepts."""

    def __init__(self, path: str | Path, valid: str) -> None:
        super().__init__(path, "checkpoint file or model name")
        self.valid = valid
        self.args = (f"{self.args[0]}; --model takes a checkpoint path or one of: {valid}",)

    def __reduce__(self):
        return (type(self), (self.path, self.valid))


class PatientLeakError(XRayTriageError):
    """A patient's images are in more than one split."""


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


# --- DICOM ------------------------------------------------------------------------------------
STATUS_NO_PIXEL_DATA = 0xA900
"""Error, data set does not match SOP class: an image storage object without pixel data."""
STATUS_NOT_ACCEPTED = 0xC000
"""Error, cannot understand: the object is not one this node triages (reason in ErrorComment)."""
STATUS_UNDECODABLE = 0xC210
"""Error, cannot understand: the data set could not be decoded."""
PERMANENT_FAILURES = frozenset({STATUS_NO_PIXEL_DATA, STATUS_NOT_ACCEPTED, STATUS_UNDECODABLE})


class StoreRefused(Exception):
    """Raised by ``on_image`` for an image that will never be accepted (answered with ``status``,
    a permanent failure, and ``reason`` as ErrorComment) rather than a transient problem.
    (Not an :class:`XRayTriageError`: it is an answer to the sender, not a failure of ours.)"""

    def __init__(self, reason: str, status: int = STATUS_NOT_ACCEPTED) -> None:
        if status not in PERMANENT_FAILURES:
            raise ValueError(f"status 0x{status:04X} is not a permanent C-STORE failure")
        super().__init__(reason)
        self.reason = reason
        self.status = status


class DownloadError(XRayTriageError):
    """A published model's file could not be downloaded (offline, refused, HTTP error)."""


class ChecksumError(XRayTriageError):
    """A downloaded or converted file does not match its expected SHA-256; it was removed."""


class UnsafePickleError(XRayTriageError):
    """A pickle asked for a callable that is not on the allow-list (never executed)."""


class BackupError(XRayTriageError):
    """A service backup or restore that cannot be done (names the file and the problem)."""


class QuantizationError(XRayTriageError):
    """An int8 twin could not be made (no calibration images) or ranks unlike float32."""


# --- the web service (serving) ------------------------------------------------------------------
class UploadRejected(XRayTriageError):
    """An upload that is not accepted; ``status`` is the HTTP status that fits the problem."""

    def __init__(self, filename: str, problem: str, status: int = 422) -> None:
        self.filename = filename
        self.problem = problem
        self.status = status
        super().__init__(f"{filename}: {problem}")


class UploadError(Exception):
    """The request as a whole is refused (``status``: 400, 413 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class TooLarge(Exception):
    """A request body ran past the size limit while it streamed in (``size``: bytes seen so far);
    the body-limit middleware answers 413."""

    def __init__(self, size: int) -> None:
        self.size = size


class UnknownFinding(XRayTriageError):
    """A finding name the model does not have (HTTP 404)."""


class HeatmapQueueFull(Exception):
    """Too many heatmap jobs are waiting; the caller should retry later (HTTP 503)."""


class StorageFull(OSError):
    """The data folder cannot take more data (no space, quota, read-only): retry later (HTTP 507)."""


class IllegalTransition(XRayTriageError):
    """A write that would move a row between two states the life cycle does not connect."""


class SopConflict(Exception):
    """Another copy of the same SOP instance was committed while this one was being added
    (the repository retries the insert)."""


class DuplicateImage(Exception):
    """The same bytes are stored already, in study ``study_id`` (theirs stands)."""

    def __init__(self, study_id: str) -> None:
        self.study_id = study_id
