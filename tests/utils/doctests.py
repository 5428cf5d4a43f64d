"""Run a module's numpydoc ``Examples`` as doctests: the one runner of the unit and spark tiers."""

from __future__ import annotations

import doctest
import io
from pathlib import Path
from types import ModuleType
from typing import Any


def run_examples(module: ModuleType, tmp_path: Path, **globs: Any) -> int:
    """Run every example of ``module``, each with ``globs`` and ``tmp`` (an empty folder of its
    own); fail with the doctest report if one fails. Returns the number of examples run."""
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module.__name__} has no Examples to run"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in tests:
        folder = tmp_path / test.name.removeprefix(f"{module.__name__}.")
        folder.mkdir()
        test.globs.update({**globs, "tmp": folder})
        runner.run(test, out=report.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, report.getvalue()
    return results.attempted
