"""``python -m poison_server serve ...``: the real ``xraytriage serve`` whose decoder kills the
process (SIGKILL, like a codec that segfaults or the OOM killer) when it meets an image that
carries :data:`attacks.POISON_MARKER`. Used by the poison-image test to crash the server in
the middle of scoring, deterministically.
"""

from __future__ import annotations

import os
import signal
import sys

import xraytriage.io
from attacks import POISON_MARKER

_read = xraytriage.io.read_radiograph


def _poisoned(path, *args, **kwargs):
    with open(path, "rb") as fh:
        if POISON_MARKER in fh.read(1 << 16):
            os.kill(os.getpid(), signal.SIGKILL)
    return _read(path, *args, **kwargs)


xraytriage.io.read_radiograph = _poisoned  # before anything imports it by name

if __name__ == "__main__":
    from xraytriage.cli.main import main

    sys.exit(main())
