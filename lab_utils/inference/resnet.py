"""ResNet-50 batch inference: real photos, the model, and two ways to get it to the executors.

Nothing is downloaded by default. The photos are random crops of the two JPEG photographs that
ship inside scikit-learn. The model is Keras' ResNet-50 architecture; it uses ImageNet weights
when the file ``share_storages/models/resnet50/resnet50_weights_tf_dim_ordering_tf_kernels.h5``
is present, otherwise random weights: the labels are then meaningless but the throughput is
real, and the notebook says so. The weights get there by hand (:data:`WEIGHTS_HOWTO`) or, where
a network exists, by the opt-in download of :func:`fetch_imagenet` (``LAB_IMAGENET_DOWNLOAD=1``).
Keras itself would download them (``ResNet50(weights="imagenet")``); the lab's rule that
nothing is fetched at run time unless asked is why the model is built with ``weights=None``.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from lab_utils.common.atomic import atomic_write_bytes
from lab_utils.common.saved_model import save_model
from lab_utils.common.tensorflow import (
    MakePredictFn,
    PredictFn,
    configure_tensorflow,
    graph_predict,
)
from lab_utils.errors import LabError

IMAGE_SIZE = (224, 224)
WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
CLASS_INDEX_FILE = "imagenet_class_index.json"
WEIGHTS_HOWTO = f"""\
To use ImageNet weights, on a machine with internet access run
    python -c "import keras; keras.applications.ResNet50(weights='imagenet')"
then copy ~/.keras/models/{WEIGHTS_FILE} (and, for class names,
~/.keras/models/{CLASS_INDEX_FILE} after keras.applications.resnet50.decode_predictions
has run once) into share_storages/models/resnet50/."""
#: Where Keras fetches the same files (``keras.applications.resnet.BASE_WEIGHTS_PATH`` and
#: ``keras.applications.imagenet_utils.CLASS_INDEX_PATH``), and the weights' MD5 as Keras checks
#: it (``WEIGHTS_HASHES["resnet50"][0]``, the file with the classification top).
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{WEIGHTS_FILE}"
WEIGHTS_MD5 = "2cb95161c43110f7111970584f804107"
CLASS_INDEX_URL = ("https://storage.googleapis.com/download.tensorflow.org/data/"
                   f"{CLASS_INDEX_FILE}")
DOWNLOAD_SWITCH = "LAB_IMAGENET_DOWNLOAD"


class ImagenetDownloadError(LabError, ConnectionError):
    """The opt-in download of ResNet-50's ImageNet files failed: no network, or a bad file."""


def fetch_imagenet(model_dir: Path, *, weights_url: str | None = None,
                   class_index_url: str | None = None, weights_md5: str | None = None,
                   timeout: float = 60.0) -> list[Path]:
    """Download the ImageNet weights and class index into ``model_dir``, each only if missing.

    The notebook calls it only when ``LAB_IMAGENET_DOWNLOAD=1`` (``config.imagenet_download``):
    by default the lab fetches nothing at run time. Each file is checked (the weights against
    Keras' MD5, the index as JSON of 1000 classes) and written under a temporary name, then
    renamed, so a failed download leaves nothing behind. The URLs and the MD5 default to
    :data:`WEIGHTS_URL`, :data:`CLASS_INDEX_URL` and :data:`WEIGHTS_MD5`. Returns the files
    written. Raises :class:`ImagenetDownloadError`, naming the switch and the fix, when a file
    cannot be fetched.
    """
    model_dir = Path(model_dir)
    written = []
    for url, name, check in ((weights_url or WEIGHTS_URL, WEIGHTS_FILE, weights_md5 or WEIGHTS_MD5),
                             (class_index_url or CLASS_INDEX_URL, CLASS_INDEX_FILE, None)):
        dest = model_dir / name
        if dest.is_file():
            continue
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ImagenetDownloadError(
                f"{DOWNLOAD_SWITCH}=1 asked to download {name} from {url}, and it could not be "
                f"fetched ({exc}). On a machine without a network, unset {DOWNLOAD_SWITCH} to "
                f"run on random weights, or put the files in {model_dir} yourself:\n"
                f"{WEIGHTS_HOWTO}") from exc
        digest = hashlib.md5(data).hexdigest()  # the hash Keras publishes for the file
        if check is not None and digest != check:
            raise ImagenetDownloadError(
                f"{name} from {url} is not the file Keras publishes (MD5 {digest}, expected "
                f"{check}; {len(data):,} bytes): a proxy or a cut connection changed it. Run "
                f"again, or put the file in "
                f"{model_dir} yourself:\n{WEIGHTS_HOWTO}")
        if check is None:
            try:
                classes = len(json.loads(data))
            except ValueError as exc:
                raise ImagenetDownloadError(
                    f"{name} from {url} is not JSON ({exc}): run again, or put the file in "
                    f"{model_dir} yourself:\n{WEIGHTS_HOWTO}") from exc
            if classes != 1000:
                raise ImagenetDownloadError(
                    f"{name} from {url} names {classes} classes, not ImageNet's 1000: run "
                    f"again, or put the file in {model_dir} yourself:\n{WEIGHTS_HOWTO}")
        model_dir.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_bytes(dest, data))
    return written


def imagenet_weights(model_dir: Path, *, download: bool = False) -> Path | None:
    """The ImageNet weights file in ``model_dir``, fetched first when missing and ``download``
    (:func:`fetch_imagenet`); None when it is not there and no download was asked for."""
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file() and download:
        fetch_imagenet(Path(model_dir))
    return weights if weights.is_file() else None


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


def build_model(model_dir: Path, *, download: bool = False):
    """ResNet-50 with ImageNet weights if present in ``model_dir`` (or, with ``download``,
    fetched into it: :func:`imagenet_weights`); returns (model, imagenet?)."""
    weights = imagenet_weights(model_dir, download=download)  # before TensorFlow: fails fast
    import keras

    model = keras.applications.ResNet50(weights=None, input_shape=(*IMAGE_SIZE, 3))
    if weights is not None:
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
