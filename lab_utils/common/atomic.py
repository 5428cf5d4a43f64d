"""Write a file (or a whole folder) under a temporary name beside it and rename it into place.

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
:func:`replace_folder` does the same for a folder (a saved model, a TFRecord output).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def replace_folder(dest: Path | str, *,
                   check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A fresh, hidden staging folder beside ``dest``; when the block ends without an error it
    becomes ``dest``.

    The swap renames the previous folder to a hidden trash name, the staging folder to
    ``dest``, and removes the trash: ``dest`` is missing only between two renames, never half
    written. If the second rename fails the previous folder is renamed back. On any error in
    the block the staging folder is removed and ``dest`` is left as it was. Names carry a
    uuid4, so two writers (two drivers, two attempts of a task) never share a staging folder.

    ``check(dest)`` (optional) runs before the block and again just before the swap, since
    something else may have been put at ``dest`` meanwhile; it raises to refuse the
    replacement (the TFRecord writers refuse to replace a folder that is not their own
    output). A ``dest`` that is a symbolic link has its target replaced; the link stays.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with replace_folder(root / "model") as staging:
    ...     _ = (staging / "weights.bin").write_bytes(b"new")
    >>> sorted(p.name for p in root.iterdir())
    ['model']
    >>> with replace_folder(root / "model") as staging:
    ...     _ = (staging / "weights.bin").write_bytes(b"torn")
    ...     raise OSError("disk full")
    Traceback (most recent call last):
    OSError: disk full
    >>> (root / "model" / "weights.bin").read_bytes(), len(list(root.iterdir()))
    (b'new', 1)
    """
    folder = Path(dest)
    if folder.is_symlink():
        folder = folder.resolve()  # replace what the link points to, keep the link
    if check is not None:
        check(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{PREFIX}{folder.name}.staging-{uuid.uuid4().hex}")
    staging.mkdir()
    try:
        yield staging
        if check is not None:
            check(folder)
        if folder.exists():
            trash = folder.with_name(f"{PREFIX}{folder.name}.replaced-{uuid.uuid4().hex}")
            os.rename(folder, trash)
            try:
                os.rename(staging, folder)
            except BaseException:
                os.rename(trash, folder)
                raise
            # The new folder is in place: a file that cannot be removed from the old one does
            # not make the write fail (it stays in the hidden trash folder).
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful swap
