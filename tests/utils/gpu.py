"""Keras on a GPU under either backend, for ``tests/gpu`` and its benchmark (``bench.py``).

The lab runs TensorFlow, but a GPU machine may only have PyTorch (``KERAS_BACKEND=torch``): the
helpers here work on both, so the GPU tests check the lab's partition predictor and a
TF-trained ``.keras`` file wherever a GPU is. Keras, TensorFlow and PyTorch are imported inside
the functions: importing this module costs nothing where the GPU tests skip.
"""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lab_utils.common.saved_model import ModelSpec, load_spec
from lab_utils.data import images
from lab_utils.inference import scoring
from lab_utils.training.cnn import train_image_classifier

PredictFn = Callable[[np.ndarray], np.ndarray]


def backend() -> str:
    import keras

    return keras.backend.backend()


def _torch():
    if backend() != "torch":
        return None
    import torch

    return torch


def keras_device(lab_device: str) -> str:
    """The lab's TensorFlow-style ``/GPU:0`` / ``/CPU:0`` as ``keras.device`` takes it on every
    backend: ``gpu:0`` / ``cpu`` (the torch backend maps gpu to cuda, but not the leading ``/``).

    Not ``cpu:0``: under the torch backend, ``keras.device('cpu:0')`` turns a variable into a
    plain tensor that Keras re-wraps with ``requires_grad=True``, and loading a model with an
    integer variable (Dropout's seed) fails with "Only Tensors of floating point and complex
    dtype can require gradients" (seen on an H200 machine).
    """
    device = lab_device.lstrip("/").lower()
    return "cpu" if device.startswith("cpu") else device


def keras_loader(model_file: Path | str, calls: list[str] | None = None
                 ) -> Callable[[str], PredictFn]:
    """A ``model_loader(device) -> predict`` for ``PartitionPredictor`` that needs no TensorFlow.

    The lab's default loader places the model with ``tf.device``; this one has the same
    contract (load once with ``compile=False``, ``model(x.astype(float32), training=False)``)
    through ``keras.device``, with ``torch.no_grad()`` on the torch backend and
    ``convert_to_numpy`` for CUDA tensors. ``calls`` records the device of every load.
    """

    def load(device: str) -> PredictFn:
        import keras

        torch = _torch()
        if calls is not None:
            calls.append(device)
        where = keras_device(device)
        with keras.device(where):
            net = keras.saving.load_model(str(model_file), compile=False)
        no_grad = torch.no_grad if torch is not None else contextlib.nullcontext

        def predict(pixels: np.ndarray) -> np.ndarray:
            with keras.device(where), no_grad():
                return keras.ops.convert_to_numpy(net(pixels.astype(np.float32),
                                                      training=False))

        predict.net = net  # type: ignore[attr-defined] - tests ask where its weights live
        return predict

    return load


def weights_device(net) -> str:
    """``gpu`` or ``cpu``: where the first weight of a loaded Keras model lives."""
    device = net.weights[0].value.device  # torch.device on torch, a string on TensorFlow
    name = str(getattr(device, "type", device)).lower()
    return "gpu" if "cuda" in name or "gpu" in name else "cpu"


def gpu_count() -> int:
    """GPUs the current backend sees."""
    torch = _torch()
    if torch is not None:
        return torch.cuda.device_count()
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def tensor_float_32(enabled: bool) -> Iterator[None]:
    """Allow or forbid TF32 matmuls and convolutions (Ampere and later) inside the block.

    Both frameworks allow TF32 convolutions by default: a 10-bit mantissa, so GPU results
    differ from the CPU's around 1e-3 instead of 1e-6.
    """
    torch = _torch()
    if torch is not None:
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        return
    import tensorflow as tf

    saved_tf = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(enabled)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(saved_tf)


def reset_peak_memory() -> None:
    torch = _torch()
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory_bytes() -> int:
    """Peak bytes allocated on GPU 0 since :func:`reset_peak_memory`."""
    torch = _torch()
    if torch is not None:
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    import tensorflow as tf

    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def free_models() -> None:
    """Drop this process's cached models and give their GPU memory back (torch backend)."""
    scoring._CACHE.clear()
    gc.collect()
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def train_digits_model(workdir: Path) -> ModelSpec:
    """The lab's digits CNN (``lab_utils.training.cnn``, seed 0) trained on the lab's image set
    under the current backend, in ``workdir``."""
    data = workdir / "images"
    images.build_image_dataset(data)
    train_image_classifier(data, workdir / "digits_cnn")
    return load_spec(workdir / "digits_cnn")


def digit_rows(workdir: Path) -> list[dict]:
    """``binaryFile``-like rows (path, content): the digits as PNG and as JPEG, then the lab's
    bad-input corpus (13 files, 6 of them unreadable)."""
    rows = []
    for fmt in ("png", "jpeg"):
        folder = workdir / fmt
        images.build_image_dataset(folder, image_format=fmt)
        rows += [{"path": f"{fmt}/{label}/{path.name}", "content": path.read_bytes()}
                 for path, label in images.list_labelled_images(folder)]
    images.write_bad_input_corpus(workdir / "bad")
    rows += [{"path": f"bad/{path.name}", "content": path.read_bytes()}
             for path in sorted((workdir / "bad").iterdir())]
    return rows


def synthetic_jpegs(n: int, side: int, seed: int = 0) -> list[dict]:
    """``n`` distinct photo-like JPEG rows (gradients, ellipses, noise), ``side`` pixels square."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    rows = []
    for i in range(n):
        a, b, c = rng.uniform(0, 255, 3), rng.uniform(-120, 120, 3), rng.uniform(-120, 120, 3)
        base = a + b * xx[..., None] + c * yy[..., None] + rng.normal(0, 12, (side, side, 3))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, side - 20, 2))
            w, h = (int(v) for v in rng.integers(10, side // 2, 2))
            draw.ellipse([x0, y0, x0 + w, y0 + h],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        rows.append({"path": f"synthetic/{i:05d}.jpg", "content": buffer.getvalue()})
    return rows


def probabilities(predict: PredictFn, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``predict`` over ``pixels`` in batches, as one float32 array."""
    return np.concatenate([np.asarray(predict(pixels[i:i + batch_size]), dtype=np.float32)
                           for i in range(0, len(pixels), batch_size)])
