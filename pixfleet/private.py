"""Files and directories only their owner can read: what pixfleet writes on a machine's disk
(the embedded broker's database, uploads, outputs, records) is private by default.

Modes are set explicitly (``0700`` directories, ``0600`` files), whatever the umask. Only what
pixfleet creates is touched: an existing directory (``/tmp``, a shared mount) keeps its mode.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode 0700, whatever the umask."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(new, DIR_MODE)


def touch_private(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 (and its missing directories 0700) unless it
    exists; True if it was created here."""
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True
