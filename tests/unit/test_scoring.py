"""The scoring core (:mod:`lab_utils.inference.scoring`) and the partition predictor with fake
models: batching, caching, errors. No Spark, no TensorFlow."""

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab_utils import inference
from lab_utils.common import saved_model
from lab_utils.inference import udfs

CLASSES = ("dark", "light")


def png(value: int, size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


class BrightnessModel:
    """Fake model: P(light) = mean brightness; records every batch it sees."""

    def __init__(self):
        self.batches = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        assert pixels.dtype == np.uint8 and pixels.shape[1:] == (8, 8, 3)
        self.batches.append(len(pixels))
        light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
        return np.stack([1 - light, light], axis=1)


def test_scores_in_order_with_per_row_errors():
    model = BrightnessModel()
    contents = [png(10), b"", png(250), b"garbage", png(200), None]
    out = inference.score_images([f"f{i}" for i in range(6)], contents, model, CLASSES, (8, 8),
                                 batch_size=2)
    assert list(out["prediction"]) == ["dark", None, "light", None, "light", None]
    assert out["confidence"][0] == pytest.approx(1 - 10 / 255, abs=1e-3)
    assert list(out["error"].isna()) == [True, False, True, False, True, False]
    assert "empty file" in out["error"][1] and "not an image" in out["error"][3]
    assert model.batches == [2, 1]  # 3 good images in batches of 2: decoded rows only


def test_fail_fast_names_the_file():
    with pytest.raises(inference.InferenceError, match="broken.png: empty file"):
        inference.score_images(["ok.png", "broken.png"], [png(1), b""], BrightnessModel(),
                               CLASSES, (8, 8), fail_fast=True)


def test_a_udf_loads_its_model_only_once_a_file_decodes():
    # Spark retries a failed task 4 times, each in a fresh Python worker: a fail_fast task
    # stopped by a bad file, or a task of bad files only, must not load the model each time.
    loads = []

    def make():
        loads.append(1)
        return BrightnessModel()

    spec = saved_model.ModelSpec(Path("m"), CLASSES, (8, 8), 3, {})
    key = ("test-lazy", uuid.uuid4().hex)
    with pytest.raises(inference.InferenceError, match="broken.png: empty file"):
        udfs._scorer(spec, make, key, 4, True)(["broken.png", "ok.png"], [b"", png(1)])
    out = udfs._scorer(spec, make, key, 4, False)(["a", "b"], [b"", b"garbage"])
    assert out["error"].notna().all() and loads == []
    out = udfs._scorer(spec, make, key, 4, False)(["a", "b"], [png(1), b""])
    assert list(out["prediction"]) == ["dark", None] and loads == [1]


def test_model_with_wrong_output_shape_is_explained():
    with pytest.raises(inference.InferenceError, match=r"expected \(1, 2\) probabilities"):
        inference.score_images(["a"], [png(1)], lambda x: np.zeros((1, 3)), CLASSES, (8, 8))


def test_model_loaded_once_per_worker_process():
    loads = []

    def make():
        loads.append(1)
        return BrightnessModel()

    key = ("test-once", 1)
    for _ in range(5):
        fn = inference.cached_predict_fn(key, make)
        inference.score_images(["a"], [png(5)], fn, CLASSES, (8, 8))
    assert len(loads) == 1 and inference.LOAD_COUNTS[key] == 1


def test_a_new_maker_never_inherits_a_freed_makers_cache_key():
    # Makers built in a loop and dropped: CPython hands a freed object's id to the next one,
    # so an id()-based key would let workers keep serving the previous model.
    keys, ids = set(), set()
    for k in range(50):
        def make(k=k):
            return k

        ids.add(id(make))
        keys.add(udfs._maker_key(make))
        del make
    assert len(keys) == 50
    assert len(ids) < 50, "ids were not reused: the scenario this test guards did not occur"

    def shared():
        return 0

    assert udfs._maker_key(shared) == udfs._maker_key(shared)  # one model per worker


def test_partition_predictor_batches_and_marks_bad_rows():
    seen = []

    def loader(device):
        seen.append(device)
        return lambda batch: batch.sum(axis=1, keepdims=True)

    def pre(row):
        if row["x"] is None:
            raise ValueError("missing x")
        return np.array([row["x"], 1.0])

    def post(row, out, err):
        return {"id": row["id"], "y": None if out is None else float(out[0]), "error": err}

    predictor = inference.PartitionPredictor(loader, pre, post, "id int, y double, error string",
                                             batch_size=2, gpu_count=0)
    rows = [{"id": i, "x": None if i == 2 else float(i)} for i in range(5)]
    out = list(predictor._predict_partition(0, iter(rows)))
    assert out == [(0, 1.0, None), (1, 2.0, None), (2, None, "ValueError: missing x"),
                   (3, 4.0, None), (4, 5.0, None)]  # in input order
    assert seen == ["/CPU:0"]


def _sum_loader(device):
    return lambda batch: batch.sum(axis=1, keepdims=True)


def test_partition_predictor_loads_once_per_worker_across_tasks():
    # Spark unpickles the predictor afresh for every task: two copies stand for two tasks that
    # the same reused Python worker runs. The model must be loaded once, not once per task.
    from pyspark import cloudpickle

    predictor = inference.PartitionPredictor(
        _sum_loader, lambda row: np.array([row["x"], 1.0]),
        lambda row, out, err: {"id": row["id"], "y": float(out[0]), "error": err},
        "id int, y double, error string", gpu_count=0)
    blob = cloudpickle.dumps(predictor)
    for task in range(2):
        copy = cloudpickle.loads(blob)
        assert copy is not predictor and copy.model_loader is not None
        assert list(copy._predict_partition(task, iter([{"id": task, "x": 2.0}]))) == [
            (task, 3.0, None)]
    assert inference.LOAD_COUNTS[(*predictor._cache_key, "/CPU:0")] == 1


def test_factories_check_the_model_before_spark(tmp_path):
    # No SparkSession exists: the error must come from the model check, before any job.
    with pytest.raises(saved_model.ModelError, match="model not found"):
        inference.iterator_udf(tmp_path / "nowhere")


def test_worker_cache_keeps_the_three_most_recent_models():
    loads = []

    def maker(name):
        def make():
            loads.append(name)
            return BrightnessModel()
        return make

    for name in ["a", "b", "c", "a", "d", "a", "b"]:
        inference.cached_predict_fn(("lru", name), maker(name))
    # "b" was evicted by "d" (a was used more recently), so it is loaded a second time.
    assert loads == ["a", "b", "c", "d", "b"]


@pytest.mark.parametrize(("uri", "path"), [
    ("file:/data/a b.png", "/data/a b.png"),
    ("file:///data/a.png", "/data/a.png"),
    ("file:/data/50%25 off#1?.png", "/data/50%25 off#1?.png"),  # Hadoop paths are not encoded
    ("file:/data/colon:name ü.png", "/data/colon:name ü.png"),
    ("/already/local.png", "/already/local.png"),
])
def test_local_path_cuts_the_scheme_and_decodes_nothing(uri, path):
    assert inference.local_path(uri) == path


def test_local_path_refuses_other_file_systems():
    with pytest.raises(ValueError, match="only local or shared"):
        inference.local_path("s3a://bucket/x.png")


def test_a_file_pillow_fails_on_with_a_plain_value_error_is_that_rows_error():
    # A PNG whose IHDR chunk claims 8 bytes: Pillow raises ValueError, not an image error.
    damaged = bytearray(png(1))
    damaged[8:12] = (8).to_bytes(4, "big")
    out = inference.score_images(["ok.png", "damaged.png"], [png(1), bytes(damaged)],
                                 BrightnessModel(), CLASSES, (8, 8))
    assert out["prediction"][0] == "dark" and out["error"][0] is None
    assert out["prediction"][1] is None and "corrupt or truncated" in out["error"][1]


# ------------------------------------------------------------------ outputs not probabilities

NOT_PROBABILITIES = ("not probabilities: each must be a finite number in [0, 1] (± 1e-05); a "
                     "model that diverged in training gives NaN or inf, one without a softmax "
                     "output gives values outside [0, 1]")


def broken_model(bad: list):
    """The brightness model, except that it answers ``bad`` for images brighter than 240."""
    def predict(pixels: np.ndarray) -> np.ndarray:
        out = BrightnessModel()(pixels).astype(np.float32)  # what a Keras model returns
        out[pixels.reshape(len(pixels), -1).mean(axis=1) > 240] = bad
        return out

    return predict


BAD_OUTPUTS = [  # (the model's output for the bright images, the value the error names)
    ([0.2, np.nan], "NaN"),
    ([np.nan, np.nan], "NaN"),
    ([np.inf, 0.0], "inf"),
    ([0.1, -np.inf], "-inf"),
    ([-3.0, 7.0], "-3"),
    ([0.5, 1.5], "1.5"),
]


@pytest.mark.parametrize("bad, value", BAD_OUTPUTS)
def test_an_output_that_is_no_probability_is_that_rows_error(bad, value):
    out = inference.score_images(["a", "b", "c", "d"], [png(10), png(250), png(200), png(255)],
                                 broken_model(bad), CLASSES, (8, 8), batch_size=3)
    assert len(out) == 4
    assert list(out["prediction"]) == ["dark", None, "light", None]
    assert out["confidence"][[1, 3]].isna().all() and out["confidence"][[0, 2]].notna().all()
    error = f"the model's output for this image has {value}: {NOT_PROBABILITIES}"
    assert list(out["error"]) == [None, error, None, error]


def test_float32_rounding_above_one_is_a_probability():
    out = inference.score_images(["a"], [png(250)], broken_model([0.0, 1.0 + 1e-6]), CLASSES,
                                 (8, 8))
    assert out["prediction"][0] == "light" and out["error"][0] is None


def test_fail_fast_names_the_file_whose_output_is_no_probability():
    with pytest.raises(inference.InferenceError, match=r"^b\.png: the model's output for this "
                                                       r"image has NaN: not probabilities"):
        inference.score_images(["a.png", "b.png"], [png(10), png(250)],
                               broken_model([np.nan, 0.5]), CLASSES, (8, 8), fail_fast=True)


@pytest.mark.parametrize("bad, value", BAD_OUTPUTS)
def test_the_partition_predictor_makes_an_output_that_is_no_probability_its_rows_error(bad,
                                                                                       value):
    spec = saved_model.ModelSpec(Path("m"), CLASSES, (8, 8), 3, {})
    predictor = inference.image_partition_predictor(spec, lambda device: broken_model(bad),
                                                    batch_size=3, gpu_count=0)
    rows = [{"path": p, "content": c} for p, c in zip("abcd", [png(10), png(250), b"",
                                                              png(200)], strict=True)]
    out = list(predictor._predict_partition(0, iter(rows)))
    assert [(path, prediction) for path, prediction, _, _ in out] == [
        ("a", "dark"), ("b", None), ("c", None), ("d", "light")]
    assert out[1][2:] == (None, f"the model's output for this image has {value}: "
                                f"{NOT_PROBABILITIES}")
    assert out[2][3].startswith("ImageError: empty file")
    assert out[0][3] is None and out[3][3] is None


def test_the_checks_examples_run(tmp_path):
    from lab_utils.inference import checks
    from tests.utils.doctests import run_examples

    assert run_examples(checks, tmp_path) >= 2
