"""``select_device``'s three rules with a stand-in TaskContext: Spark's GPU address, else the
partition index modulo the visible GPUs, else the CPU. No Spark, no TensorFlow, no GPU."""

from __future__ import annotations

import sys

import pytest

from lab_utils import inference
from tests.utils.task_context import (
    fake_task_context,
    gpu_resources,
    summing_predictor,
    without_pyspark,
)


def _modulo_rule(index: int, gpu_count: int) -> str:
    return f"/GPU:{index % gpu_count}" if gpu_count else "/CPU:0"


@pytest.mark.parametrize("gpu_count", [0, 1, 2, 4])
@pytest.mark.parametrize("index", range(6))
def test_without_pyspark_the_index_modulo_the_gpus_decides(monkeypatch, index, gpu_count):
    without_pyspark(monkeypatch)
    assert inference.select_device(index, gpu_count) == _modulo_rule(index, gpu_count)


@pytest.mark.parametrize("gpu_count", [0, 1, 2])
@pytest.mark.parametrize("index", range(4))
def test_outside_a_task_the_index_modulo_the_gpus_decides(monkeypatch, index, gpu_count):
    fake_task_context(monkeypatch, in_task=False)  # the driver: TaskContext.get() is None
    assert inference.select_device(index, gpu_count) == _modulo_rule(index, gpu_count)


@pytest.mark.parametrize("resources", [{}, gpu_resources()], ids=["no-gpu-resource",
                                                                  "no-gpu-address"])
@pytest.mark.parametrize("index", range(4))
def test_a_task_without_a_scheduled_gpu_falls_back_to_the_modulo_rule(monkeypatch, resources,
                                                                        index):
    fake_task_context(monkeypatch, resources)
    assert inference.select_device(index, 2) == f"/GPU:{index % 2}"
    assert inference.select_device(index, 0) == "/CPU:0"


@pytest.mark.parametrize(("index", "gpu_count"), [(0, 0), (5, 0), (7, 1), (3, 4), (3, None)])
def test_spark_scheduled_gpu_wins_over_index_and_count(monkeypatch, index, gpu_count):
    # gpu_count=None would ask TensorFlow: Spark's address must answer first, without TF.
    fake_task_context(monkeypatch, gpu_resources("0"))
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    assert inference.select_device(index, gpu_count) == "/GPU:0"


def test_a_task_with_several_gpus_takes_the_first_address(monkeypatch):
    fake_task_context(monkeypatch, gpu_resources("3", "5"))
    assert inference.select_device(1, 1) == "/GPU:3"


def test_unknown_gpu_count_asks_tensorflow(monkeypatch):
    # The ImportError path a machine without TensorFlow takes (KERAS_BACKEND=torch): the
    # error names the missing module instead of guessing a device.
    without_pyspark(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="tensorflow"):
        inference.select_device(0, None)


def test_partition_predictor_loads_on_the_task_s_scheduled_gpu(monkeypatch):
    fake_task_context(monkeypatch, gpu_resources("1"))
    devices: list[str] = []
    predictor = summing_predictor(devices, gpu_count=0)
    assert list(predictor._predict_partition(9, iter([{"id": 1, "x": 2.0}]))) == [(1, 3.0, None)]
    assert devices == ["/GPU:1"]
