"""The GPU layer: skipped as a whole, with one line saying why, unless a GPU can be used.

A GPU counts when ``nvidia-smi -L`` lists one and the Keras backend's framework sees it, asked
in a subprocess so this process imports no framework just to skip. The backend is Keras's
(``KERAS_BACKEND``, default ``tensorflow``, the lab's); ``torch`` serves a GPU machine that
has PyTorch and no TensorFlow.

``GPU_TEST_MODEL_DIR`` may point at a model folder made elsewhere (``model.keras`` +
``metadata.json``, e.g. by ``make models`` under TensorFlow): the tests then check that
TF-trained file under this backend. By default they train the lab's digits CNN here, seed 0.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HOW_TO_RUN = "run `make test-gpu` on a machine with an NVIDIA GPU and its drivers"

#: Asked in a subprocess: prints how many GPUs the backend's framework sees.
_PROBES = {
    "tensorflow": "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))",
    "torch": "import torch; print(torch.cuda.device_count())",
}
_FIXES = {
    "tensorflow": "install TensorFlow's CUDA libraries (pip install 'tensorflow[and-cuda]'), "
                  "or use KERAS_BACKEND=torch with a CUDA build of PyTorch",
    "torch": "install a CUDA build of PyTorch",
}


@functools.cache
def gpu_missing() -> str | None:
    """Why the GPU tests cannot run here, in one line; ``None`` when they can."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return f"no NVIDIA GPU (nvidia-smi not found): {HOW_TO_RUN}"
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no usable NVIDIA GPU (nvidia-smi -L: {exc}): {HOW_TO_RUN}"
    gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    if not gpus:
        said = (listed.stderr or listed.stdout).strip().splitlines()
        return (f"no NVIDIA GPU (nvidia-smi -L lists none{': ' + said[-1] if said else ''}): "
                f"{HOW_TO_RUN}")
    if backend not in _PROBES:
        return f"KERAS_BACKEND={backend}: the GPU tests run under tensorflow or torch"
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBES[backend]], capture_output=True,
                               text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return f"{backend} did not answer how many GPUs it sees within 300 s"
    lines = probe.stdout.strip().splitlines()
    if probe.returncode != 0 or not lines or not lines[-1].isdigit():
        error = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"KERAS_BACKEND={backend} cannot be used ({error}): install it or set KERAS_BACKEND"
    if int(lines[-1]) == 0:
        return (f"{backend} sees no GPU although nvidia-smi lists {len(gpus)}: "
                f"{_FIXES[backend]}")
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # A hook, not a fixture: it runs before any (session) fixture builds a model, and a skip
    # raised here is reported at this line for every test, so `-rs` folds them into one line
    # (a skip from a fixture is reported at each test's own line).
    reason = gpu_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def gpu() -> str:
    """The Keras backend the GPU tests run under (``tensorflow`` or ``torch``)."""
    import keras

    return keras.backend.backend()


@pytest.fixture(scope="session")
def workdir(gpu, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu")


@pytest.fixture(scope="session")
def digits_spec(gpu, workdir):
    """The digits model under test: ``GPU_TEST_MODEL_DIR`` or the lab's CNN trained here."""
    from lab_utils.common.saved_model import load_spec
    from tests.utils.gpu import train_digits_model

    given = os.environ.get("GPU_TEST_MODEL_DIR")
    return load_spec(given) if given else train_digits_model(workdir / "model")


@pytest.fixture(scope="session")
def digit_rows(gpu, workdir) -> list[dict]:
    from tests.utils.gpu import digit_rows

    return digit_rows(workdir / "rows")


@pytest.fixture(scope="session")
def loader(gpu, digits_spec):
    """``make(calls) -> model_loader``: the lab's own loader (``tf.device``) under TensorFlow,
    the backend-agnostic one of ``tests.utils.gpu`` under torch; ``calls`` gets each device."""
    from lab_utils.inference import image_partition_predictor
    from tests.utils.gpu import keras_loader

    def make(calls: list[str]):
        if gpu != "tensorflow":
            return keras_loader(digits_spec.model_file, calls)
        lab_loader = image_partition_predictor(digits_spec).model_loader

        def load(device: str):
            calls.append(device)
            return lab_loader(device)

        return load

    return make


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Each test loads its own models: the per-worker cache must not hand over another's."""
    yield
    from tests.utils.gpu import free_models

    free_models()
