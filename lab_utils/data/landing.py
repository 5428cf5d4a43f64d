"""Land a file in a folder that a streaming query watches: whole or not at all, never twice.

Spark's file stream sources (``spark.readStream.format("binaryFile")`` and the others) list
the folder at every trigger and read each new path **once**. A file that a producer is still
writing can be listed half written: Spark then reads the bytes that are there, scores a
truncated image, and never looks at that path again. So a producer lands a file in two steps:

1. write it under a temporary name in a hidden staging folder, ``<folder>/.landing/``, inside
   the watched folder (so on the same file system: the last step is a rename within one
   file system, which is atomic). Spark's file listing skips names that start with ``.`` or
   ``_``, and a ``pathGlobFilter`` such as ``*.png`` does not match the temporary name either;
2. flush and ``fsync`` it, then link it into the folder under its final name in one step
   (``os.link``: the name appears with the whole content behind it, and the call fails
   instead of replacing a file already there), and fsync the folder so the name survives a
   crash of the machine.

A file system without hard links (some network and FUSE mounts) gets ``os.replace`` after a
check that the name is free; two producers racing for one name could then both pass the
check, so give each producer names of its own (a prefix, a uuid).

Landing a name that is already there raises :class:`AlreadyLandedError`: the stream has read
(or will read) the first file under that name and would never read the second.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lab_utils.errors import LabError

#: The hidden staging folder inside a landing folder (Spark's listing skips ``.`` names).
STAGING = ".landing"


class AlreadyLandedError(LabError, FileExistsError):
    """A file of that name is already in the landing folder."""


class LandingNameError(LabError, ValueError):
    """A name that would not land as one visible file in the folder."""


def _check_name(name: str) -> None:
    if not name or "/" in name or os.sep in name or name in (".", ".."):
        raise LandingNameError(f"cannot land {name!r}: give a plain file name (no folder part), "
                               "e.g. 'digit_0001.png'")
    if name.startswith((".", "_")):
        raise LandingNameError(f"cannot land {name!r}: Spark's file sources skip names that "
                               "start with '.' or '_', so it would never be read; rename it")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refusal(dest: Path) -> AlreadyLandedError:
    return AlreadyLandedError(
        f"{dest} is already landed: a file stream reads each path once, so a second file "
        "under this name would never be read; land it under a new name (add a counter, a "
        "timestamp or a uuid)")


def _publish(tmp: Path, dest: Path) -> None:
    """Give ``tmp``'s content the name ``dest`` in one step, refusing to replace a file."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise _refusal(dest) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links here: check, then rename (see the module docstring for the race).
        if dest.exists():
            raise _refusal(dest) from None
        os.replace(tmp, dest)


def land_file(folder: Path | str, name: str, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` to ``folder/name`` so that no reader ever sees part of it.

    ``data`` is the file's bytes, or a function that writes them to an open binary file (for
    content produced in pieces). Returns the landed path. The file's modification time is the
    moment its writing ended, just before it appears: what Spark's ``modificationTime`` column
    reports, the start of the arrival-to-prediction latency.

    Raises :class:`AlreadyLandedError` if ``folder/name`` exists (the folder is left as it
    was), :class:`LandingNameError` for a name with a folder part or one Spark would skip.
    A failed write leaves nothing behind, neither in the folder nor in its staging folder.

    Examples
    --------
    >>> import tempfile
    >>> landing = Path(tempfile.mkdtemp())
    >>> land_file(landing, "a.png", b"\\x89PNG...").name
    'a.png'
    >>> sorted(p.name for p in landing.iterdir())  # the staging folder is hidden
    ['.landing', 'a.png']
    >>> land_file(landing, "a.png", b"again")
    Traceback (most recent call last):
    lab_utils.data.landing.AlreadyLandedError: ... is already landed: ...
    """
    _check_name(name)
    folder = Path(folder)
    dest = folder / name
    if dest.exists():  # refused before writing anything; _publish refuses atomically too
        raise _refusal(dest)
    staging = folder / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "xb") as handle:
            if isinstance(data, bytes | bytearray | memoryview):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, dest)
        _fsync_folder(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def staging_leftovers(folder: Path | str) -> list[Path]:
    """Temporary files a killed producer left in ``folder``'s staging folder (safe to delete:
    none of them was ever visible to the stream)."""
    staging = Path(folder) / STAGING
    return sorted(p for p in staging.iterdir() if p.is_file()) if staging.is_dir() else []
