"""Atomic directory writes: a run killed mid-write never leaves a half-written model or checkpoint."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_directory(final: str, prefix: str = ".tmp-"):
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` by rename.

    On an exception the temporary directory is removed and ``final`` is left as it was. Leftover
    ``<prefix>*`` directories from a killed process are harmless (never read).
    """
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
