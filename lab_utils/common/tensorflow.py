"""TensorFlow's per-task setup in a Spark Python worker: its thread pools sized to the task, its
GPUs restricted to the task's, and a model run as one compiled graph.

Inference, training and data prep all run TensorFlow inside Spark tasks, so this sits below
them. TensorFlow is imported inside the functions: importing this module does not load it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lab_utils.common.task import task_cpus, task_gpu_addresses

#: A model's predict function: a batch of inputs in, a batch of outputs (probabilities) out.
PredictFn = Callable[[np.ndarray], np.ndarray]
#: What builds a :data:`PredictFn` in a worker (``predict_batch_udf``'s ``make_predict_fn``).
MakePredictFn = Callable[[], PredictFn]

_LOG = logging.getLogger(__name__)
_TF_CONFIGURED = False
#: Physical GPU addresses this Python worker restricted TensorFlow to, in TensorFlow's order
#: (the first is ``/GPU:0``); ``None`` while TensorFlow sees every GPU it found.
_VISIBLE_GPUS: list[str] | None = None
_GPU_RESTRICTION_TRIED = False


def _gpu_address(device: Any) -> str:
    return str(device.name).rsplit(":", 1)[-1]  # "/physical_device:GPU:3" -> "3"


def visible_gpus() -> list[str] | None:
    """The physical GPU addresses TensorFlow was restricted to in this process, or ``None``."""
    return _VISIBLE_GPUS


def restrict_tensorflow_gpus(addresses: Sequence[str] | None = None) -> list[str] | None:
    """Let TensorFlow see only the task's GPUs, with memory growth, before it initialises.

    Left alone, TensorFlow maps most of the memory of every GPU it can see, so a task given
    GPU 1 would also take GPU 0 from the task next to it. With ``addresses`` (default: the
    running task's ``TaskContext.resources()["gpu"].addresses``) this calls
    ``tf.config.set_visible_devices`` with those physical GPUs and
    ``tf.config.experimental.set_memory_growth(gpu, True)`` on each; they then appear as
    ``/GPU:0``, ``/GPU:1``, ... in TensorFlow. Once per Python worker: when TensorFlow has
    already initialised here it cannot change, so it is left as it is and a warning is logged.

    Returns the physical addresses now visible, or ``None`` when nothing was changed.
    """
    global _VISIBLE_GPUS, _GPU_RESTRICTION_TRIED
    if _GPU_RESTRICTION_TRIED:
        return _VISIBLE_GPUS
    wanted = set(task_gpu_addresses() if addresses is None else map(str, addresses))
    if not wanted:
        return None  # no GPU for this task; a later task of this worker may get one
    _GPU_RESTRICTION_TRIED = True
    import tensorflow as tf

    physical = tf.config.list_physical_devices("GPU")
    chosen = [d for d in physical if _gpu_address(d) in wanted]
    if not chosen:
        _LOG.warning("Spark gave this task GPU(s) %s, but TensorFlow sees %s: TensorFlow is "
                     "left as it is (is this a CUDA build of TensorFlow?)", sorted(wanted),
                     [_gpu_address(d) for d in physical] or "no GPU")
        return None
    try:
        tf.config.set_visible_devices(chosen, "GPU")
        for gpu in chosen:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:  # TF initialised its devices before this call
        _LOG.warning("TensorFlow was already initialised in this Python worker (%s): it keeps "
                     "every visible GPU. Call lab_utils.common.tensorflow.configure_tensorflow() "
                     "before any TensorFlow op runs in the worker.", exc)
        return None
    _VISIBLE_GPUS = [_gpu_address(d) for d in chosen]
    return _VISIBLE_GPUS


def configure_tensorflow(threads: int | None = None) -> None:
    """Size TensorFlow's thread pools to the task's cores, once, before TF runs any op; when
    Spark assigned the task GPUs, first restrict TensorFlow to them
    (:func:`restrict_tensorflow_gpus`).

    TensorFlow ignores ``OMP_NUM_THREADS``; left alone, every Python worker starts pools as
    large as the machine, and several tasks per machine oversubscribe the cores.
    ``LAB_TF_THREADS`` (an executor environment variable) overrides it for experiments: a
    number, or ``tf`` to leave TensorFlow's own machine-sized pools (the oversubscribed setup).
    """
    global _TF_CONFIGURED
    if _TF_CONFIGURED:
        return
    restrict_tensorflow_gpus()  # a no-op without task GPUs; before TF initialises devices
    override = os.environ.get("LAB_TF_THREADS", "").strip().lower()
    if override == "tf" and threads is None:
        _TF_CONFIGURED = True
        return
    import tensorflow as tf

    n = threads or (int(override) if override.isdigit() else 0) or task_cpus()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF already ran an op in this process: its pools are fixed, keep them
    _TF_CONFIGURED = True


def graph_predict(model: Any, preprocess: Callable | None = None) -> PredictFn:
    """``predict(pixels) -> outputs`` running ``model`` (and ``preprocess``) as one TF graph.

    Keras 3 calls a functional model eagerly, and an eager call keeps every intermediate
    activation of the batch alive until it returns: ResNet-50 at batch 16 peaks at ~3.3 GB of
    resident memory that way. Traced once by ``tf.function`` for any batch size, the graph
    runtime frees each activation after its last use (~1.2 GB) and skips per-op dispatch. It
    also skips ``model.predict``'s per-call dataset setup and progress bar.
    """
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape)[1:]

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    def call(x: Any) -> Any:
        return model(preprocess(x) if preprocess else x, training=False)

    def predict(pixels: np.ndarray) -> np.ndarray:
        return call(np.asarray(pixels, dtype=np.float32)).numpy()

    # A function attribute, which mypy cannot type: tests read its tracing count.
    predict.graph = call  # type: ignore[attr-defined]
    return predict
