"""A decoder that dies hard on one file, for the triage engine's crash test.

Lives in its own light module (no torch import) so the worker processes that unpickle it start fast.
"""

from __future__ import annotations

import os

from xraytriage.triage.engine import Prepared, prepare_image


def crash_on_poison(path: str, contract) -> Prepared:
    """Like ``prepare_image``, but kills its process on files named ``poison*`` (a codec segfault)."""
    if "poison" in os.path.basename(path):
        os._exit(3)
    return prepare_image(path, contract)
