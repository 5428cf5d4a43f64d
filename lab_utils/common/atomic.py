"""Write a file under a temporary name in its own folder and rename it into place.

Readers (Spark, the model server, a notebook, a second lab command) see the whole old file or
the whole new one, never a half-written one. The temporary name is

* in the target's folder, so that the rename is atomic (same file system);
* hidden (it starts with ``.``), so Spark's file sources, globs such as ``*.tfrecord`` and the
  model server's listing skip it;
* unique across hosts, processes and calls (pid and a random uuid4), so two attempts of one
  Spark task (a retry, a speculative copy, on one executor or on two machines sharing the
  folder) never write into each other's file;
* ending in the target's suffix, for writers that insist on one (Keras saves only to
  ``*.keras``).

A failed write leaves the target as it was and removes the temporary file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

#: What marks a temporary name; :func:`leftovers` finds those a killed process left.
PREFIX = "."
MARK = ".tmp"


def temporary_name(path: Path) -> Path:
    """A fresh, hidden, unique name next to ``path`` (short: a 250-byte name stays legal)."""
    suffix = path.suffix if len(path.suffix.encode()) <= 16 else ""
    stem = path.name[:len(path.name) - len(suffix)] if suffix else path.name
    # Cut in bytes, not characters: file systems limit a name to 255 bytes, and 180 characters
    # of a non-Latin name can be 540.
    stem = stem.encode()[:160].decode("utf-8", "ignore")
    return path.with_name(f"{PREFIX}{stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}"
                          f"{MARK}{suffix}")


def atomic_write(path: Path | str, write: Callable[[Path], object], *,
                 mode: int | None = None) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``.

    ``mode`` (e.g. ``0o600`` for a secret) is set on the temporary file before ``write`` runs,
    so the content is never readable by others, not even for a moment.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        if mode is not None:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path | str, text: str, *, mode: int | None = None) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode=mode)


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int | None = None) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def leftovers(folder: Path | str) -> list[Path]:
    """Temporary files a killed writer left in ``folder`` (not recursive)."""
    return sorted(p for p in Path(folder).glob(f"{PREFIX}*{MARK}*") if p.is_file())
