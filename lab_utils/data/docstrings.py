"""A real text corpus, offline: the docstrings of the Python libraries installed in the lab.

Every public function, class and method of PySpark, pandas, NumPy, scikit-learn, Keras and
TensorFlow that carries a docstring in its source becomes one entry: its library, its qualified
name (module path plus class and method), and its summary (the docstring's first paragraph).
Nothing is downloaded and no library code runs: the source files are *parsed* with :mod:`ast`,
never imported, so the corpus is the same on every machine with the same lock.

The work splits into two pure parts that a Spark job (notebook 10) runs in its tasks:

* :func:`source_files` (driver): the ``.py`` files of each library, test folders left out,
  as ``(library, path relative to the library's folder)`` in a fixed order;
* :func:`docstrings_in_file` (a task): one file's entries. A task finds the library's folder
  with ``importlib.util.find_spec`` in *its own* interpreter, so only the file names travel.

:func:`smoke_files` picks the small file list of a smoke run: the files that define the names a
test must find, plus a seeded sample of the others.
"""

from __future__ import annotations

import ast
import importlib.util
import random
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from lab_utils.errors import LabError

#: The libraries of the default corpus, in the order their entries are listed.
LIBRARIES = ("pyspark", "pandas", "numpy", "sklearn", "keras", "tensorflow")
#: Folders whose files are tests or test helpers, not the library's API.
SKIPPED_FOLDERS = frozenset({"tests", "test", "testing", "_testing", "benchmarks", "examples"})
#: Summaries shorter than this say nothing ("Alias.", "Deprecated.").
MIN_SUMMARY_CHARS = 20
#: Summaries are cut here (characters), at a word boundary.
MAX_SUMMARY_CHARS = 400
#: The entries' columns, as a Spark DDL schema (``mapInPandas`` output).
SCHEMA = "library string, qualname string, kind string, summary string"
COLUMNS = ("library", "qualname", "kind", "summary")


class LibraryNotFoundError(LabError, ModuleNotFoundError):
    """A library asked for is not installed in this interpreter."""


class LibraryFileError(LabError, OSError):
    """A source file the driver listed is missing where a task reads it."""


def library_root(library: str) -> Path:
    """The folder of an installed top-level package, found without importing it.

    A package folder on disk, never one inside a zip: a Spark Python worker has
    ``pyspark.zip`` on its path before the installed PySpark, and ``find_spec`` may point there.
    """
    spec = importlib.util.find_spec(library)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    locations += [str(Path(entry) / library) for entry in sys.path if entry]
    for location in locations:
        if Path(location).is_dir():
            return Path(location)
    raise LibraryNotFoundError(
        f"library {library!r} is not installed in this interpreter ({library!r} has no "
        f"package folder on disk): pick one of the lab's libraries, e.g. "
        f"{', '.join(LIBRARIES)}, or install it in the lab's lock")


def source_files(libraries: Sequence[str] = LIBRARIES) -> list[tuple[str, str]]:
    """``(library, relative path)`` of every ``.py`` file outside test folders, sorted."""
    files = []
    for library in libraries:
        root = library_root(library)
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if not SKIPPED_FOLDERS.intersection(rel.parts[:-1]):
                files.append((library, rel.as_posix()))
    return files


def module_name(library: str, relpath: str) -> str:
    """``pyspark``, ``sql/functions/builtin.py`` -> ``pyspark.sql.functions.builtin``."""
    parts = [library, *relpath[:-3].split("/")]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def summary(docstring: str) -> str:
    """The first paragraph, whitespace collapsed, cut at :data:`MAX_SUMMARY_CHARS`.

    Examples
    --------
    >>> summary("Maps each group   using a pandas udf.\\n\\n    Parameters\\n    ----")
    'Maps each group using a pandas udf.'
    """
    first = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    text = " ".join(first.split())
    if len(text) > MAX_SUMMARY_CHARS:
        text = text[:MAX_SUMMARY_CHARS].rsplit(" ", 1)[0]
    return text


def _entries(body: Iterable[ast.stmt], prefix: str,
             in_class: bool = False) -> Iterable[tuple[str, str, str]]:
    """``(qualname, kind, docstring)`` of the public functions and classes in ``body``, and of
    the methods of those classes (nested functions are implementation, not API)."""
    for node in body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_"):
            continue
        name = f"{prefix}.{node.name}"
        doc = ast.get_docstring(node)
        is_class = isinstance(node, ast.ClassDef)
        kind = "class" if is_class else ("method" if in_class else "function")
        if doc:
            yield name, kind, doc
        if is_class:
            yield from _entries(node.body, name, in_class=True)


def docstrings_in_file(library: str, relpath: str, root: Path | None = None) -> list[dict]:
    """The entries of one source file, in source order: ``library``, ``qualname``, ``kind``
    (function, class or method) and ``summary``. A file that does not parse gives none; one
    that cannot be read raises :class:`LibraryFileError`.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "ops.py").write_text('''
    ... class Grouped:
    ...     def applyInPandas(self, func):
    ...         \\"\\"\\"Maps each group of the DataFrame using a pandas function.\\"\\"\\"
    ...     def _hidden(self):
    ...         \\"\\"\\"A private helper, left out.\\"\\"\\"
    ... ''')
    >>> docstrings_in_file("lib", "ops.py", root)
    [{'library': 'lib', 'qualname': 'lib.ops.Grouped.applyInPandas', 'kind': 'method', \
'summary': 'Maps each group of the DataFrame using a pandas function.'}]
    """
    path = (root if root is not None else library_root(library)) / relpath
    try:
        source = path.read_bytes()
    except OSError as err:  # the driver listed it: this interpreter has another install
        raise LibraryFileError(
            f"{path} cannot be read here ({err.strerror}): the driver listed it, so this "
            f"executor runs another {library} than the driver; run the lab's one environment "
            f"everywhere (`make lab`, PYSPARK_PYTHON)") from err
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError):
        return []
    out = []
    for qualname, kind, doc in _entries(tree.body, module_name(library, relpath)):
        text = summary(doc)
        if len(text) >= MIN_SUMMARY_CHARS:
            out.append({"library": library, "qualname": qualname, "kind": kind,
                        "summary": text})
    return out


def short_name(qualname: str) -> str:
    """The last two parts of a qualified name (``GroupedData.applyInPandas``): what the
    encoder reads beside the summary.

    Examples
    --------
    >>> short_name("pyspark.sql.pandas.group_ops.PandasGroupedOpsMixin.applyInPandas")
    'PandasGroupedOpsMixin.applyInPandas'
    """
    return ".".join(qualname.split(".")[-2:])


def smoke_files(files: Sequence[tuple[str, str]], names: Iterable[str], *, others: int,
                seed: int = 0) -> list[tuple[str, str]]:
    """A smoke run's files: those that define any of ``names`` (``def name`` or
    ``class name``, found by a text search, no parsing), plus ``others`` more drawn with
    ``seed``; in the order of ``files``."""
    pattern = re.compile(rb"^\s*(?:async\s+)?(?:def|class)\s+(?:"
                         + b"|".join(re.escape(n.encode()) for n in sorted(set(names)))
                         + rb")\b", re.M)
    roots: dict[str, Path] = {}
    wanted = set()
    for library, rel in files:
        root = roots.setdefault(library, library_root(library))
        try:
            if pattern.search((root / rel).read_bytes()):
                wanted.add((library, rel))
        except OSError:
            continue
    rest = [f for f in files if f not in wanted]
    wanted.update(random.Random(seed).sample(rest, min(others, len(rest))))
    return [f for f in files if f in wanted]
