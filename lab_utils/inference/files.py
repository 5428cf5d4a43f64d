"""Files in and out of inference: images read as ``binaryFile`` rows (empty files kept),
``file:`` URIs back to local paths, and images placed into one folder per predicted class."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.common.atomic import atomic_write
from lab_utils.common.files import HIDDEN_PREFIXES
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: Where ``place_by_class`` puts files that were not scored or whose class is no folder name.
ERRORS_FOLDER = "_errors"
#: Hex digits of the source path's SHA-256 in a placed name: a clash needs two files of the same
#: name in one class folder whose paths share 40 bits of hash.
TAG_CHARS = 10
_NAME_BYTES = 255  # the longest file name POSIX file systems take


class NonLocalPathError(LabError, ValueError):
    """A path on another file system (``s3a://``, ``hdfs://``): files are placed with POSIX
    calls, which reach only local or shared (NFS) folders."""


class UnplaceableFileError(LabError, OSError):
    """A file is not placed into a class folder: it is a symbolic link or not a regular file."""


def read_images(spark, folder: Path | str, *, partitions: int | None = None) -> DataFrame:
    """All files under ``folder`` (recursively) as ``path``, ``label``, ``content`` rows.

    Every file is read, not only ``*.png``/``*.jpg``: a stray non-image becomes a row with an
    error rather than a silently skipped file, and so does an empty file. ``label`` is the
    parent folder's name (the true class in the lab's layout).

    Examples
    --------
    ``images_dir`` has two images in ``dark/``, two in ``light/`` and an empty
    ``light/empty.png``, which is kept:

    >>> df = read_images(spark, images_dir, partitions=2)
    >>> df.columns, df.count(), df.rdd.getNumPartitions()
    (['path', 'label', 'content'], 5, 2)
    >>> df.where("length(content) = 0").select("path", "label").collect()
    [Row(path='file:/.../light/empty.png', label='light')]
    """
    from lab_utils.common.files import read_binary_files

    return read_binary_files(spark, folder, partitions=partitions)


def local_path(uri: str) -> str:
    """``file:/a/b c.png`` -> ``/a/b c.png`` (placing files needs a shared POSIX folder).

    Spark's file sources give Hadoop path strings, which are *not* percent-encoded: a file
    named ``50%25 off.png`` or ``a#b?.png`` is written as is, so the prefix is cut, nothing is
    decoded.

    Examples
    --------
    >>> local_path("file:/data/photos/50%25 off.png")
    '/data/photos/50%25 off.png'
    >>> local_path("s3a://bucket/photo.png")
    Traceback (most recent call last):
    lab_utils.inference.files.NonLocalPathError: s3a://bucket/photo.png: only local or shared...
    """
    for prefix in ("file://", "file:"):
        if uri.startswith(prefix):
            return uri[len(prefix):]
    scheme = uri.split(":", 1)[0] if ":" in uri.split("/", 1)[0] else ""
    if scheme:
        raise NonLocalPathError(f"{uri}: only local or shared (NFS) folders can be sorted into "
                                "class folders; copy from other file systems with their own "
                                "tools")
    return uri


def placed_name(source: str) -> str:
    """The name a file gets in its class folder: its own name with a tag of its full path.

    ``/data/2024/IMG_0001.JPG`` -> ``IMG_0001.3f9a0c1b2d.JPG``. Camera folders are full of
    ``IMG_0001.JPG``: the tag keeps them apart, and it comes from the path alone, so each task
    names its files without asking the others, and a retried task or a rerun writes the same
    file to the same name (replacing its own copy, never another file's). The extension stays
    last, so viewers still know the type; a long stem is cut so the name stays 255 bytes.
    """
    name = os.path.basename(source)
    tag = hashlib.sha256(os.fsencode(source)).hexdigest()[:TAG_CHARS]
    suffix = Path(name).suffix
    suffix = suffix if len(suffix.encode()) <= 16 else ""
    stem = name[:len(name) - len(suffix)] if suffix else name
    room = _NAME_BYTES - len(tag) - 1 - len(suffix.encode())
    stem = stem.encode()[:room].decode("utf-8", "ignore")
    return f"{stem}.{tag}{suffix}"


def class_folder(prediction: object) -> tuple[str, str | None]:
    """``(folder, problem)``: the folder for a predicted class, or ``_errors`` and why not.

    A class name becomes one folder right below ``dest``, so it must be one plain, visible
    name: not empty, ``.`` or ``..``, without ``/``, ``\\`` or NUL, not starting with ``.`` or
    ``_`` (Spark's file sources and ``ls`` skip those, and ``_errors`` is taken) and at most 255
    bytes. Any other is a mistake in the model's class names; it is not rewritten into a
    lookalike folder (two classes could meet there), the file goes to ``_errors/``.
    """
    name = str(prediction)
    if (name in {"", ".", ".."} or any(c in name for c in "/\\\0")
            or name.startswith(HIDDEN_PREFIXES) or len(name.encode()) > _NAME_BYTES):
        return ERRORS_FOLDER, (f"class name {name!r} cannot be a folder name (empty, '.', '..', "
                               "'/', '\\', NUL, a leading '.' or '_', or over 255 bytes): the file "
                               f"is in {ERRORS_FOLDER}/; rename the class in the model's "
                               "class_names (metadata.json) and sort again")
    return name, None


def _copy(source: str, tmp: Path) -> None:
    """Copy the regular file ``source`` to ``tmp`` with its permission bits, never following a
    link (``O_NOFOLLOW``: no race between a check and the open) and never wider than the source
    (written owner-only, then given the source's bits)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_error(source) from None
        raise
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnplaceableFileError(f"{source} is not a regular file; only files are sorted")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
            os.fchmod(out.fileno(), stat.S_IMODE(info.st_mode) & 0o777)  # no setuid/sticky


def _link_error(source: str) -> UnplaceableFileError:
    return UnplaceableFileError(f"{source} is a symbolic link (to {os.readlink(source)!r}): "
                                "not placed, so a link to a file outside the data folder is "
                                "never copied out; put the file itself in the data folder")


def place_file(path: str, dest: Path | str, prediction: object, error: object, *,
               link: bool = False) -> tuple[str | None, str | None]:
    """Place one scored file under ``dest``; ``(placed path or None, problem or None)``.

    The pure core of :func:`place_by_class` (no Spark): ``dest/<class>/<placed_name>``, or
    ``dest/_errors/`` when the row has an ``error``, no prediction, or a class that is no folder
    name (then the problem says so). A symbolic link is not placed (its row's problem names it).
    """
    try:
        source = local_path(path)
        if error is not None or prediction is None:
            folder, problem = ERRORS_FOLDER, None
        else:
            folder, problem = class_folder(prediction)
        target = Path(dest) / folder / placed_name(source)
        if link and os.path.islink(source):
            raise _link_error(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        # follow_symlinks=False: a link swapped in after the check is linked, not its target
        atomic_write(target, (lambda tmp: os.link(source, tmp, follow_symlinks=False)) if link
                     else (lambda tmp: _copy(source, tmp)))
        return str(target), problem
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def place_by_class(predictions: DataFrame, dest: Path | str, *, link: bool = False) -> DataFrame:
    """Copy every scored file into ``dest/<prediction>/`` (errors into ``dest/_errors/``).

    Every input file gets its own placed file, named by :func:`placed_name`: the source's name
    and a tag of its full path, so ``a/IMG_0001.JPG`` and ``b/IMG_0001.JPG`` both arrive, and a
    rerun into the same ``dest`` replaces its own copies instead of adding new ones. Rows with an
    ``error`` or no prediction go to ``_errors/``; so does a row whose class cannot be a folder
    name (see :func:`class_folder`), with ``placed_error`` saying so: nothing is written outside
    ``dest``. A copy keeps the source's permission bits (a private file stays private). Symbolic
    links are not followed: such a row gets ``placed_error`` naming the link and no file (Spark's
    ``binaryFile`` read their targets, so the row was scored; links to *folders* inside the data
    folder are followed when Spark lists it, as for any Spark file source).

    The copies run on the executors, in parallel, like the classification itself. Each file is
    written under a temporary name and renamed, so a retried task never leaves a torn file.
    ``link=True`` makes hard links instead of copies (same file system only).

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``placed`` (where the file is now, or null) and ``placed_error`` (null, or why
        it is not where its prediction says) for each input row.

    Examples
    --------
    Two cameras' ``IMG_0001.JPG``, both predicted ``cat``, and a file that could not be scored:

    >>> for camera in ("a", "b"):
    ...     _ = (tmp / "in" / camera).mkdir(parents=True)
    ...     _ = (tmp / "in" / camera / "IMG_0001.JPG").write_bytes(camera.encode())
    >>> _ = (tmp / "in" / "broken.png").write_bytes(b"")
    >>> scored = read_images(spark, tmp / "in").selectExpr(
    ...     "path", "IF(length(content) > 0, 'cat', NULL) AS prediction",
    ...     "IF(length(content) > 0, NULL, 'empty file') AS error")
    >>> out = place_by_class(scored, tmp / "sorted").toPandas()
    >>> len(out), out["placed_error"].isna().all().item()
    (3, True)
    >>> sorted(p.parent.name for p in (tmp / "sorted").rglob("*") if p.is_file())
    ['_errors', 'cat', 'cat']
    """
    dest = str(dest)

    def place(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            placed, problems = [], []
            for path, label, error in zip(frame["path"], frame["prediction"], frame["error"],
                                          strict=True):
                target, problem = place_file(path, dest, label, error, link=link)
                placed.append(target)
                problems.append(problem)
            yield pd.DataFrame({"path": frame["path"], "placed": placed,
                                "placed_error": problems})

    return predictions.select("path", "prediction", "error").mapInPandas(
        place, "path string, placed string, placed_error string")
