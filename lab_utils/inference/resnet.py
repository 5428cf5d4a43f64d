"""ResNet-50 batch inference: real photos, the model, and two ways to get it to the executors.

Nothing is downloaded. The photos are random crops of the two JPEG photographs that ship inside
scikit-learn. The model is Keras' ResNet-50 architecture; it uses ImageNet weights when the file
``share_storages/models/resnet50/resnet50_weights_tf_dim_ordering_tf_kernels.h5`` is present
(place it there yourself, see :data:`WEIGHTS_HOWTO`), otherwise random weights: the labels are
then meaningless but the throughput is real, and the notebook says so.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from lab_utils.common.saved_model import save_model
from lab_utils.common.tensorflow import (
    MakePredictFn,
    PredictFn,
    configure_tensorflow,
    graph_predict,
)

IMAGE_SIZE = (224, 224)
WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
CLASS_INDEX_FILE = "imagenet_class_index.json"
WEIGHTS_HOWTO = f"""\
To use ImageNet weights, on a machine with internet access run
    python -c "import keras; keras.applications.ResNet50(weights='imagenet')"
then copy ~/.keras/models/{WEIGHTS_FILE} (and, for class names,
~/.keras/models/{CLASS_INDEX_FILE} after keras.applications.resnet50.decode_predictions
has run once) into share_storages/models/resnet50/."""


def build_photo_dataset(dest: Path, n: int, *, size: int = 256, seed: int = 0) -> int:
    """Write ``n`` JPEG crops of scikit-learn's two sample photos into ``dest/<photo>/``.

    The folder then holds exactly these ``n``: crops this function wrote in an earlier, larger
    run (``<photo>_<index>.jpg`` with an index of ``n`` or more) are removed, so a smaller run
    after a bigger one scores the size it asked for. Any other file is left alone.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    names = [Path(f).stem for f in photos.filenames]  # china, flower
    for name in names:
        for old in (dest / name).glob(f"{name}_*.jpg"):
            index = old.stem[len(name) + 1:]
            if index.isdigit() and len(index) == 5 and int(index) >= n:
                old.unlink()
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = i % len(names)
        image = photos.images[k]
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = dest / names[k]
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        (folder / f"{names[k]}_{i:05d}.jpg").write_bytes(buffer.getvalue())
    return n


def class_names(model_dir: Path) -> tuple[str, ...]:
    """ImageNet class names when the index file is there, else ``imagenet_<k>``."""
    index = model_dir / CLASS_INDEX_FILE
    if index.is_file():
        table = json.loads(index.read_text())
        return tuple(table[str(k)][1] for k in range(1000))
    return tuple(f"imagenet_{k}" for k in range(1000))


def build_model(model_dir: Path):
    """ResNet-50 with ImageNet weights if present in ``model_dir``; returns (model, imagenet?)."""
    import keras

    model = keras.applications.ResNet50(weights=None, input_shape=(*IMAGE_SIZE, 3))
    weights = model_dir / WEIGHTS_FILE
    if weights.is_file():
        model.load_weights(str(weights))
        return model, True
    return model, False


def save_resnet(model, model_dir: Path, imagenet: bool) -> Path:
    """Save the model and its metadata in the lab's format
    (:func:`lab_utils.common.saved_model.save_model`: staged, then swapped in), so
    :func:`~lab_utils.common.saved_model.load_spec` can check it. The folder's other files (the
    ImageNet weights and class index a user placed there) are carried over into the new folder.
    """
    meta = {"name": "resnet50", "class_names": list(class_names(model_dir)),
            "image_size": list(IMAGE_SIZE), "channels": 3, "imagenet_weights": imagenet,
            "preprocessing": "RGB uint8 at 224x224, then keras.applications.resnet50."
                             "preprocess_input (BGR, ImageNet mean subtracted)"}
    keep = [p for p in (model_dir / WEIGHTS_FILE, model_dir / CLASS_INDEX_FILE) if p.is_file()]
    return save_model(model, meta, model_dir, keep=keep)


def _wrap(model) -> PredictFn:
    from keras.applications.resnet50 import preprocess_input

    # One compiled graph (preprocessing included): ~1.2 GB peak per Python worker at batch 16
    # instead of ~3.3 GB for the eager call (see lab_utils.common.tensorflow.graph_predict).
    return graph_predict(model, preprocess_input)


def predict_fn_from_path(model_file: Path | str) -> MakePredictFn:
    """Each Python worker loads the saved model from shared storage (once, then cached)."""
    model_file = str(model_file)

    def make() -> PredictFn:
        configure_tensorflow()
        import keras

        return _wrap(keras.saving.load_model(model_file, compile=False))

    return make


def predict_fn_from_broadcast(weights) -> MakePredictFn:
    """Rebuild the architecture on each worker and set its weights from a Spark broadcast (the
    driver ships ~100 MB of weights per application instead of each worker reading a file)."""

    def make() -> PredictFn:
        configure_tensorflow()
        import keras

        model = keras.applications.ResNet50(weights=None, input_shape=(*IMAGE_SIZE, 3))
        model.set_weights(weights.value)
        return _wrap(model)

    return make
