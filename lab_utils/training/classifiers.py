"""The small Keras classifiers the data-prep notebooks train on the TFRecords they write: churn
from customer windows (notebook 06, scored against one-feature rules on held-out customers) and
spoken words from log-mel features (notebook 07, against chance and the majority word)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lab_utils.data.churn_windows import FEATURES
from lab_utils.data.tfrecords.schema import TFRecordSchema, TFRecordSchemaError


def _model_inputs(x: dict):
    """log1p daily features, with the customer's own baseline as an extra channel."""
    import tensorflow as tf

    seq = tf.math.log1p(tf.maximum(x["features"], 0.0))
    base = tf.math.log1p(tf.reshape(x["baseline_calls"], [-1, 1, 1]))
    return tf.concat([seq, tf.tile(base, [1, tf.shape(seq)[1], 1])], axis=-1)


def _fixed_shape(schema: TFRecordSchema, name: str, folder) -> tuple[int, ...]:
    """``name``'s shape in ``schema``; the models here take fixed-size inputs only."""
    shape = schema[name].shape
    if shape is None:
        raise TFRecordSchemaError(f"feature {name!r} in {folder} is variable-length, but this "
                                  "model takes a fixed shape: write it with one (Feature shape=)")
    return shape


def rule_scores(x: dict) -> dict[str, np.ndarray]:
    """One-feature rules over a batch of windows (numpy): the baselines the model must beat."""
    feats = np.asarray(x["features"])
    return {
        "complaints in window": feats[:, :, FEATURES.index("complaints")].sum(axis=1),
        "fewer calls in window": -feats[:, :, FEATURES.index("calls")].sum(axis=1),
        "smaller top-ups in window": -feats[:, :, FEATURES.index("topup_amount")].sum(axis=1),
    }


def train_churn_classifier(
    train_dir, test_dir, *, epochs: int = 8, batch_size: int = 128, seed: int = 0,
    model_path=None,
) -> dict[str, Any]:
    """Train a small Keras classifier on TFRecord windows and score the held-out customers.

    Reads both folders with :func:`lab_utils.data.tfrecords.read_tfrecords` (``tf.data``), trains a
    1-D convolution over the daily features, and compares its ROC AUC on the held-out
    customers with chance (0.5) and with each one-feature rule of :func:`rule_scores`.

    Returns
    -------
    dict
        ``auc``, ``rule_auc`` (per rule), ``best_rule``, ``train_windows``, ``test_windows``,
        ``test_positives``, ``history`` (loss per epoch), ``train_seconds``.
    """
    import time

    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from lab_utils.data import tfrecords

    keras.utils.set_random_seed(seed)
    names = ["features", "baseline_calls"]
    train = tfrecords.read_tfrecords(train_dir, label="label", features=names,
                                     batch_size=batch_size, shuffle_buffer=20_000, seed=seed)
    train = train.map(lambda x, y: (_model_inputs(x), tf.cast(y, tf.float32)))
    schema, info = tfrecords.load_schema(train_dir)
    window, channels = _fixed_shape(schema, "features", train_dir)
    counts = np.zeros(2)
    for _, y in tfrecords.read_tfrecords(train_dir, label="label", features="label",
                                         batch_size=4096).as_numpy_iterator():
        counts += np.bincount(y, minlength=2)[:2]
    # Positives are rare (a few % of windows): weight them up so the model does not ignore them.
    class_weight = {0: 1.0, 1: float(counts[0] / max(counts[1], 1))}
    inputs = keras.Input((window, channels + 1))
    h = keras.layers.Conv1D(16, 3, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy")
    began = time.perf_counter()
    history = model.fit(train, epochs=epochs, class_weight=class_weight, verbose=0)
    seconds = time.perf_counter() - began
    scores, labels = [], []
    rules: dict[str, list[np.ndarray]] = {}
    for x, y in tfrecords.read_tfrecords(test_dir, label="label", features=names,
                                         batch_size=1024).as_numpy_iterator():
        scores.append(model(_model_inputs(x), training=False).numpy().ravel())
        labels.append(y)
        for name, value in rule_scores(x).items():
            rules.setdefault(name, []).append(value)
    y_true = np.concatenate(labels)
    rule_auc = {name: float(roc_auc_score(y_true, np.concatenate(v))) for name, v in rules.items()}
    if model_path:
        model.save(model_path)
    best = max(rule_auc, key=rule_auc.__getitem__)
    return {
        "auc": float(roc_auc_score(y_true, np.concatenate(scores))),
        "rule_auc": rule_auc,
        "best_rule": best,
        "best_rule_auc": rule_auc[best],
        "train_windows": int(counts.sum()),
        "train_positives": int(counts[1]),
        "test_windows": int(len(y_true)),
        "test_positives": int(y_true.sum()),
        "history": [round(float(v), 4) for v in history.history["loss"]],
        "train_seconds": round(seconds, 2),
        "train_records_in_schema": info["records"],
    }


def train_speech_classifier(train_dir, test_dir, *, epochs: int = 12, batch_size: int = 16,
                            seed: int = 0) -> dict[str, Any]:
    """Train a small CNN on log-mel TFRecords; accuracy on held-out clips against chance.

    Returns ``accuracy``, ``chance`` (1 / words), ``majority`` (most common test word's share),
    ``per_word`` accuracy, ``confusion`` (rows: true word), counts, ``history`` and
    ``train_seconds``.
    """
    import time

    import keras
    import tensorflow as tf

    from lab_utils.data import tfrecords

    keras.utils.set_random_seed(seed)
    schema, info = tfrecords.load_schema(train_dir)
    classes = list(schema.metadata["classes"])
    frames, n_mels = _fixed_shape(schema, "mel", train_dir)

    def standardise(x, y):
        mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        return (x - mean) / tf.sqrt(var + 1e-6), y

    train = tfrecords.read_tfrecords(train_dir, label="label", features="mel",
                                     batch_size=batch_size, shuffle_buffer=10_000,
                                     seed=seed).map(standardise)
    test = tfrecords.read_tfrecords(test_dir, label="label", features="mel",
                                    batch_size=256).map(standardise)
    # Convolutions over time with the mel bands as channels: small, and fast on 2 cores.
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((frames, n_mels)),
        layers.Conv1D(32, 5, padding="same"), layers.BatchNormalization(), layers.ReLU(),
        layers.MaxPooling1D(2),
        layers.Conv1D(32, 5, padding="same"), layers.BatchNormalization(), layers.ReLU(),
        layers.MaxPooling1D(2),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(len(classes), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy")
    began = time.perf_counter()
    history = model.fit(train, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - began
    predicted, truth = [], []
    for x, y in test.as_numpy_iterator():
        predicted.append(np.argmax(model(x, training=False).numpy(), axis=1))
        truth.append(y)
    y_pred, y_true = np.concatenate(predicted), np.concatenate(truth)
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "chance": 1.0 / len(classes),
        "majority": float(np.bincount(y_true).max() / len(y_true)),
        "per_word": {w: float(confusion[i, i] / max(confusion[i].sum(), 1))
                     for i, w in enumerate(classes)},
        "confusion": confusion.tolist(),
        "classes": classes,
        "train_clips": int(info["records"]),
        "test_clips": int(len(y_true)),
        "history": [round(float(v), 4) for v in history.history["loss"]],
        "train_seconds": round(seconds, 2),
    }
