"""The numpydoc ``Examples`` of the pure-Python modules, run as doctests without Spark.

Each example gets ``tmp``, an empty folder of its own, and nothing else: no ``spark``, so an
example that needs a session fails here and belongs in ``tests/spark/test_doctests.py``. To
document another module whose Examples need no Spark, add it to ``MODULES``.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from lab_utils import session
from lab_utils.common import atomic, connect, process
from lab_utils.data import images, landing
from lab_utils.data.tfrecords import reader as tfrecords_reader
from lab_utils.data.tfrecords import schema as tfrecords_schema
from lab_utils.inference import checks, scoring, streaming
from lab_utils.training import distributed
from lab_utils.training.groups import fit
from tests.utils.doctests import run_examples

MODULES: list[ModuleType] = [
    atomic,
    connect,
    session,
    process,
    scoring,
    checks,
    images,
    tfrecords_schema,
    tfrecords_reader,
    fit,
    landing,
    streaming,
    distributed,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_examples_in_the_docs_run(module, tmp_path):
    assert run_examples(module, tmp_path) >= 1
