"""The numpydoc ``Examples`` of the public Spark functions, run as doctests on ``local[2]``.

What the docs show is what the library does, and the two cannot drift. Each example gets:

* ``spark``: this tier's ``local[2]`` session;
* ``tmp``: an empty folder of its own;
* ``model_dir``: a saved two-class image model (``dark``, ``light``; 4x4 RGB input), written
  once for the module by :func:`tests.utils.fake_models.write_model`;
* ``make_predict_fn``: that model's ``make_predict_fn`` (the factories' second argument), which
  calls an image ``dark`` or ``light`` by its mean pixel, without TensorFlow
  (:func:`tests.utils.fake_models.make_predict_fn`);
* ``images_dir``: ``dark/000.png``, ``dark/051.png``, ``light/204.png``, ``light/255.png`` (grey
  levels) and ``light/empty.png`` (0 bytes), written once by
  :func:`tests.utils.fake_models.write_images`.

Modules whose Examples need no Spark run in the unit tier (``tests/unit/test_doctests.py``).
To document another module, add it to ``MODULES``.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from lab_utils.data import audio, churn, churn_windows, speech
from lab_utils.data.tfrecords import writer as tfrecords_writer
from lab_utils.inference import files, partition, rest_udf, udfs
from lab_utils.training.groups import data as groups_data
from lab_utils.training.groups import runs, score, search
from tests.utils import fake_models
from tests.utils.doctests import run_examples

MODULES: list[ModuleType] = [
    files,
    runs,
    udfs,
    partition,
    rest_udf,
    churn,
    churn_windows,
    audio,
    speech,
    tfrecords_writer,
    groups_data,
    score,
    search,
]

#: Warnings a module's Examples raise on ``local[2]`` that are not the lab's to fix (the
#: tier turns warnings into errors), each with its reason.
KNOWN_WARNINGS: dict[ModuleType, tuple[str, ...]] = {
    search: (
        # joblibspark 0.6.0 still implements apply_async, which joblib 1.6 deprecated.
        "ignore:`apply_async` is deprecated:DeprecationWarning",
        # PySpark's inheritable thread, which joblibspark starts without a session.
        "ignore:Spark session is not provided. Tags will not be inherited:UserWarning",
    ),
}


@pytest.fixture(scope="module")
def shared_globals(tmp_path_factory) -> dict:
    """The model and the image folder every example may use, written once."""
    root = tmp_path_factory.mktemp("doctest-shared")
    return {"model_dir": fake_models.write_model(root / "model"),
            "make_predict_fn": fake_models.make_predict_fn,
            "images_dir": fake_models.write_images(root / "images")}


@pytest.mark.parametrize("module", [
    pytest.param(m, marks=[pytest.mark.filterwarnings(w) for w in KNOWN_WARNINGS.get(m, ())])
    for m in MODULES], ids=lambda m: m.__name__)
def test_examples_in_the_docs_run(module, local_spark, shared_globals, tmp_path):
    assert run_examples(module, tmp_path, **shared_globals, spark=local_spark) >= 1
