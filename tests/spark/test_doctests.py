"""The numpydoc ``Examples`` of the public Spark functions, run as doctests on ``local[2]``.

Each example gets ``spark`` (this tier's session) and ``tmp`` (an empty folder of its own), so
what the docs show is what the library does, and the two cannot drift.
"""

from __future__ import annotations

import doctest
import io
from types import ModuleType

import pytest

from lab_utils.inference import files, rest_udf
from lab_utils.training.groups import runs

MODULES: list[ModuleType] = [files, runs, rest_udf]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_examples_in_the_docs_run(module, local_spark, tmp_path):
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module.__name__} has no Examples to run"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in tests:
        folder = tmp_path / test.name.rsplit(".", 1)[-1]
        folder.mkdir()
        test.globs.update({"spark": local_spark, "tmp": folder})
        runner.run(test, out=report.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, report.getvalue()
    assert results.attempted >= 4
