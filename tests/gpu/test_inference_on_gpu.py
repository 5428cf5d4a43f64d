"""The lab's digits model and partition predictor on a GPU, checked against the CPU of the same
machine in the same session (no reference files): same predictions, probabilities within a
stated tolerance, the model loaded once and on the GPU the placement rule chose.

Tolerances on probabilities (softmax outputs in [0, 1]):

* ``FP32_ATOL = 1e-4`` with TF32 off: GPU and CPU differ only by summation order (~1e-6);
* ``TF32_ATOL = 1e-2`` with the frameworks' default, TF32 convolutions on Ampere and later
  GPUs: inputs rounded to a 10-bit mantissa (~5e-4 relative per product).

Where the CPU's top two classes are closer than twice the tolerance, the GPU may pick either:
predictions are compared on the rows whose margin is wider, and those must be most rows.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from lab_utils import inference
from lab_utils.data import images
from tests.utils import gpu as gpu_utils
from tests.utils.task_context import fake_task_context, gpu_resources

FP32_ATOL = 1e-4
TF32_ATOL = 1e-2
#: At least this share of rows must have a margin wide enough to compare predictions.
COMPARED_AT_LEAST = 0.9


@pytest.fixture(scope="session")
def pixels(digits_spec, digit_rows) -> np.ndarray:
    """Every decodable row of ``digit_rows``, decoded as the lab decodes them (uint8)."""
    decoded = []
    for row in digit_rows:
        with contextlib.suppress(images.ImageError):  # the bad-input corpus's broken files
            decoded.append(images.decode_image(row["content"], digits_spec.image_size))
    return np.stack(decoded)


@pytest.fixture(scope="session")
def cpu_probabilities(digits_spec, pixels) -> np.ndarray:
    predict = gpu_utils.keras_loader(digits_spec.model_file)("/CPU:0")
    assert gpu_utils.weights_device(predict.net) == "cpu"
    return gpu_utils.probabilities(predict, pixels)


@pytest.fixture(scope="session")
def cpu_rows(digits_spec, digit_rows, loader) -> list[tuple]:
    """The partition predictor's rows on the CPU (``gpu_count=0``, no Spark task)."""
    calls: list[str] = []
    predictor = inference.image_partition_predictor(digits_spec, loader(calls), gpu_count=0)
    rows = list(predictor._predict_partition(4, iter(digit_rows)))
    assert calls == ["/CPU:0"]
    gpu_utils.free_models()
    return rows


def test_the_model_loads_onto_the_gpu(digits_spec, pixels):
    predict = gpu_utils.keras_loader(digits_spec.model_file)("/GPU:0")
    assert gpu_utils.weights_device(predict.net) == "gpu"
    probs = gpu_utils.probabilities(predict, pixels[:64])
    assert probs.shape == (64, len(digits_spec.class_names))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("tf32", "atol"), [(False, FP32_ATOL), (True, TF32_ATOL)],
                         ids=["fp32", "tf32-default"])
def test_gpu_probabilities_match_the_cpu(digits_spec, pixels, cpu_probabilities, tf32, atol):
    with gpu_utils.tensor_float_32(tf32):
        predict = gpu_utils.keras_loader(digits_spec.model_file)("/GPU:0")
        probs = gpu_utils.probabilities(predict, pixels)
    assert probs.shape == cpu_probabilities.shape
    worst = float(np.abs(probs - cpu_probabilities).max())
    assert worst <= atol, f"max |GPU - CPU| = {worst:.2e} > {atol:.0e}"
    top2 = np.sort(cpu_probabilities, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * atol
    assert clear.mean() >= COMPARED_AT_LEAST, f"only {clear.mean():.1%} clear-cut rows"
    same = probs.argmax(axis=1) == cpu_probabilities.argmax(axis=1)
    assert same[clear].all(), f"{int((~same[clear]).sum())} of {int(clear.sum())} differ"


@pytest.mark.parametrize(("index", "gpu_count", "scheduled"), [(4, 1, None), (9, 0, ("0",))],
                         ids=["index-modulo-gpus", "spark-scheduled-gpu"])
def test_partition_predictor_on_the_gpu_matches_the_cpu(monkeypatch, digits_spec, digit_rows,
                                                        loader, cpu_rows, index, gpu_count,
                                                        scheduled):
    if scheduled is not None:  # a Spark task given GPU 0 (spark.task.resource.gpu.amount)
        fake_task_context(monkeypatch, gpu_resources(*scheduled))
    calls: list[str] = []
    predictor = inference.image_partition_predictor(digits_spec, loader(calls), batch_size=100,
                                                    gpu_count=gpu_count)
    gpu_utils.reset_peak_memory()
    rows = list(predictor._predict_partition(index, iter(digit_rows)))
    assert calls == ["/GPU:0"]  # loaded once, on the GPU the rule chose
    assert gpu_utils.peak_memory_bytes() > 0

    assert [r[0] for r in rows] == [r["path"] for r in digit_rows]  # input order
    errors = [(r[0], r[3]) for r in rows if r[3] is not None]
    assert errors == [(r[0], r[3]) for r in cpu_rows if r[3] is not None]
    assert len(errors) == 6, errors  # the bad-input corpus's unreadable files
    scored = [(gpu, cpu) for gpu, cpu in zip(rows, cpu_rows, strict=True) if cpu[3] is None]
    worst = max(abs(gpu[2] - cpu[2]) for gpu, cpu in scored)
    assert worst <= TF32_ATOL, f"max confidence difference {worst:.2e} > {TF32_ATOL:.0e}"
    # A top probability above 0.5 + atol leads the runner-up by more than 2 * atol.
    clear = [(gpu, cpu) for gpu, cpu in scored if cpu[2] > 0.5 + TF32_ATOL]
    assert len(clear) >= COMPARED_AT_LEAST * len(scored)
    assert [gpu[1] for gpu, _ in clear] == [cpu[1] for _, cpu in clear]


def test_select_device_counts_the_gpus_with_tensorflow(monkeypatch, gpu):
    if gpu != "tensorflow":
        pytest.skip(f"select_device(gpu_count=None) asks TensorFlow, not {gpu}")
    fake_task_context(monkeypatch, in_task=False)
    count = gpu_utils.gpu_count()
    assert [inference.select_device(i, None) for i in range(3)] == [
        f"/GPU:{i % count}" for i in range(3)]
