"""TensorFlow limited to the GPUs Spark gave the task, before it starts: a fake ``tensorflow``
module records what the lab asks of it (no GPU, no TensorFlow, no Spark)."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest

from lab_utils import inference
from lab_utils.common import tensorflow as tf_setup
from lab_utils.inference import partition
from tests.utils.task_context import fake_task_context, gpu_resources, summing_predictor


class FakeTF(types.ModuleType):
    """``tf.config`` with ``gpus`` physical GPUs; ``initialised=True`` behaves like a TensorFlow
    that already ran an op (device settings raise RuntimeError)."""

    def __init__(self, gpus: int, *, initialised: bool = False):
        super().__init__("tensorflow")
        self.physical = [types.SimpleNamespace(name=f"/physical_device:GPU:{i}",
                                               device_type="GPU") for i in range(gpus)]
        self.visible: list | None = None
        self.growth: list = []
        self.threads: dict[str, int] = {}

        def set_visible_devices(devices, device_type=None):
            if initialised:
                raise RuntimeError("Visible devices cannot be modified after being initialized")
            assert device_type == "GPU"
            self.visible = list(devices)

        def set_memory_growth(device, enable):
            assert enable is True
            self.growth.append(device.name)

        self.config = types.SimpleNamespace(
            list_physical_devices=lambda kind=None: list(self.physical),
            set_visible_devices=set_visible_devices,
            experimental=types.SimpleNamespace(set_memory_growth=set_memory_growth),
            threading=types.SimpleNamespace(
                set_intra_op_parallelism_threads=lambda n: self.threads.update(intra=n),
                set_inter_op_parallelism_threads=lambda n: self.threads.update(inter=n)))


@pytest.fixture
def fresh_worker(monkeypatch):
    """A Python worker in which neither the lab nor anyone else has configured TensorFlow."""
    monkeypatch.setattr(tf_setup, "_TF_CONFIGURED", False)
    monkeypatch.setattr(tf_setup, "_VISIBLE_GPUS", None)
    monkeypatch.setattr(tf_setup, "_GPU_RESTRICTION_TRIED", False)
    monkeypatch.setattr(partition, "_WARNED_OTHER_GPU", False)
    monkeypatch.delenv("LAB_TF_THREADS", raising=False)

    def install(tf):
        monkeypatch.setitem(sys.modules, "tensorflow", tf)
        return tf

    return install


def test_tensorflow_sees_only_the_task_s_gpu_which_becomes_gpu_0(monkeypatch, fresh_worker):
    tf = fresh_worker(FakeTF(4))
    fake_task_context(monkeypatch, gpu_resources("2"))
    tf_setup.configure_tensorflow()
    assert [d.name for d in tf.visible] == ["/physical_device:GPU:2"]
    assert tf.growth == ["/physical_device:GPU:2"]
    assert tf.threads == {"intra": 1, "inter": 1}  # the thread setup still happens
    assert tf_setup.visible_gpus() == ["2"]
    assert inference.select_device(7, None) == "/GPU:0"


def test_several_gpus_keep_tensorflow_s_order(monkeypatch, fresh_worker):
    tf = fresh_worker(FakeTF(8))
    fake_task_context(monkeypatch, gpu_resources("5", "3"))
    assert tf_setup.restrict_tensorflow_gpus() == ["3", "5"]
    assert tf.growth == ["/physical_device:GPU:3", "/physical_device:GPU:5"]
    assert inference.select_device(0, None) == "/GPU:1"  # the task's first address, "5"


def test_already_initialised_tensorflow_is_left_alone_and_logged_once(monkeypatch, fresh_worker,
                                                                        caplog):
    tf = fresh_worker(FakeTF(2, initialised=True))
    fake_task_context(monkeypatch, gpu_resources("1"))
    with caplog.at_level(logging.WARNING, logger="lab_utils.common.tensorflow"):
        assert tf_setup.restrict_tensorflow_gpus() is None
        assert tf_setup.restrict_tensorflow_gpus() is None  # once per worker, no second try
    assert tf.visible is None and tf.growth == []
    assert sum("already initialised" in r.getMessage() for r in caplog.records) == 1
    assert inference.select_device(0, None) == "/GPU:1"  # TF sees every GPU: the physical one


def test_without_a_scheduled_gpu_nothing_is_restricted(monkeypatch, fresh_worker):
    tf = fresh_worker(FakeTF(2))
    fake_task_context(monkeypatch, {})
    tf_setup.configure_tensorflow()
    assert tf.visible is None and tf.growth == [] and tf.threads == {"intra": 1, "inter": 1}
    assert inference.select_device(3, 2) == "/GPU:1"  # the modulo rule, as before


def test_tf_s_own_thread_pools_still_get_the_gpu_restriction(monkeypatch, fresh_worker):
    tf = fresh_worker(FakeTF(2))
    monkeypatch.setenv("LAB_TF_THREADS", "tf")
    fake_task_context(monkeypatch, gpu_resources("1"))
    tf_setup.configure_tensorflow()
    assert [d.name for d in tf.visible] == ["/physical_device:GPU:1"] and tf.threads == {}


def test_a_gpu_tensorflow_cannot_see_is_reported(monkeypatch, fresh_worker, caplog):
    tf = fresh_worker(FakeTF(0))  # a CPU build of TensorFlow on a GPU machine
    fake_task_context(monkeypatch, gpu_resources("0"))
    with caplog.at_level(logging.WARNING, logger="lab_utils.common.tensorflow"):
        assert tf_setup.restrict_tensorflow_gpus() is None
    assert tf.visible is None and "CUDA build" in caplog.text


def test_a_reused_worker_given_another_gpu_keeps_its_own_and_says_so(monkeypatch, fresh_worker,
                                                                      caplog):
    fresh_worker(FakeTF(2))
    fake_task_context(monkeypatch, gpu_resources("0"))
    tf_setup.restrict_tensorflow_gpus()
    fake_task_context(monkeypatch, gpu_resources("1"))  # the next task of the same worker
    with caplog.at_level(logging.WARNING, logger="lab_utils.inference.partition"):
        assert inference.select_device(0, None) == "/GPU:0"
        assert inference.select_device(1, None) == "/GPU:0"
    assert sum("sees only GPU" in r.getMessage() for r in caplog.records) == 1


def test_partition_predictor_restricts_before_it_picks_the_device(monkeypatch, fresh_worker):
    tf = fresh_worker(FakeTF(2))
    fake_task_context(monkeypatch, gpu_resources("1"))
    devices: list[str] = []
    predictor = summing_predictor(devices)
    assert list(predictor._predict_partition(4, iter([{"id": 1, "x": 2.0}]))) == [(1, 3.0, None)]
    assert devices == ["/GPU:0"] and [d.name for d in tf.visible] == ["/physical_device:GPU:1"]


def test_partition_predictor_can_leave_tensorflow_alone(monkeypatch, fresh_worker):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # a loader without TensorFlow
    fake_task_context(monkeypatch, gpu_resources("1"))
    devices = []
    predictor = inference.PartitionPredictor(
        lambda device: devices.append(device) or (lambda batch: batch),
        lambda row: np.array([1.0]), lambda row, out, err: {"id": row["id"]}, "id int",
        restrict_gpus=False)
    assert list(predictor._predict_partition(0, iter([{"id": 5}]))) == [(5,)]
    assert devices == ["/GPU:1"]
