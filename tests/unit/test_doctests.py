"""The numpydoc ``Examples`` of the pure-Python modules, run as doctests without Spark.

Each example gets ``tmp``, an empty folder of its own, and nothing else: no ``spark``, so an
example that needs a session fails here and belongs in ``tests/spark/test_doctests.py``. To
document another module whose Examples need no Spark, add it to ``MODULES``.
"""

from __future__ import annotations

import doctest
import io
from types import ModuleType

import pytest

from lab_utils.common import atomic
from lab_utils.data import images
from lab_utils.data.tfrecords import reader as tfrecords_reader
from lab_utils.data.tfrecords import schema as tfrecords_schema
from lab_utils.inference import scoring
from lab_utils.training.groups import fit

MODULES: list[ModuleType] = [
    atomic,
    scoring,
    images,
    tfrecords_schema,
    tfrecords_reader,
    fit,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_examples_in_the_docs_run(module, tmp_path):
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module.__name__} has no Examples to run"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in tests:
        folder = tmp_path / test.name.removeprefix(f"{module.__name__}.")
        folder.mkdir()
        test.globs["tmp"] = folder
        runner.run(test, out=report.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, report.getvalue()
