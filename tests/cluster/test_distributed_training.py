"""One model trained on two Spark tasks at once (lab_utils.training.distributed) on the test
cluster: a tiny Keras model, a worker killed once mid-training, the barrier stage retried from
the last checkpoint, and the result checked against one process fed the same batches; and the
slots check refusing a too-wide stage before any job."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pyspark import cloudpickle

from lab_utils.common.saved_model import METADATA_FILE, MODEL_FILE
from lab_utils.training import distributed

# The workers' child processes do not have the tests on their path: ship this module's
# functions by value, as a notebook's are.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEPS, BATCH, KILL_AT, EVERY = 6, 32, 3, 2


def tiny_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def batch_rows(step: int) -> np.ndarray:
    return np.random.default_rng([3, step]).choice(256, BATCH, replace=False)


def build(keras):
    inputs = keras.Input(shape=(8,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden), name="tiny")


def tiny_train(ctx):
    """Worker ``ctx.rank``'s custom loop; rank 1 kills itself once before step KILL_AT."""
    import keras
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = tiny_data()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build(keras)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(model.trainable_variables)
    start = ctx.restore(model, optimizer)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(yb, model(xb)))
            loss = loss / BATCH
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def step(xb, yb):
        return strategy.reduce("SUM", strategy.run(replica_step, args=(xb, yb)), axis=None)

    marker = Path(ctx.params["marker"])
    losses = []
    for s in range(start, STEPS):
        if s == KILL_AT and ctx.rank == 1 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        rows = batch_rows(s)[ctx.rank::ctx.workers]
        losses.append(float(step(x[rows], y[rows])))
        ctx.checkpoint(s + 1, model, optimizer)
    return {"model": model, "losses": losses, "start_step": start}


def reference():
    """The same model, optimizer and batches in one process, no strategy: (losses, weights)."""
    import keras
    import tensorflow as tf

    x, y = tiny_data()
    keras.utils.set_random_seed(0)
    model = build(keras)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    losses = []
    for s in range(STEPS):
        rows = batch_rows(s)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y[rows],
                                                                               model(x[rows])))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        losses.append(float(loss))
    return losses, [w.numpy() for w in model.weights]


def test_a_killed_worker_resumes_from_the_checkpoint_and_matches_one_process(spark, lab_cluster,
                                                                            tmp_path):
    share = lab_cluster.cfg.share_dir
    run_dir = share / "output" / "distributed-test" / tmp_path.name
    model_dir = share / "models" / f"tiny-distributed-{tmp_path.name}"
    results = distributed.train_distributed(
        spark, tiny_train, workers=2, run_dir=run_dir, params={"marker": str(run_dir / "kill")},
        checkpoint_every=EVERY, model_dir=model_dir,
        model_meta={"class_names": ["a", "b", "c"], "image_size": [1, 8], "channels": 1},
        timeout=240)
    # The first attempt died at step KILL_AT; the retried stage restored the step-2 checkpoint.
    assert (run_dir / "kill").exists()
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [
        "rank0-attempt0.log", "rank0-attempt1.log", "rank1-attempt0.log", "rank1-attempt1.log"]
    assert [(r.rank, r.attempt, r.start_step, r.steps) for r in results] == [
        (0, 1, 2, 4), (1, 1, 2, 4)]
    assert results[0].checksum == results[1].checksum  # one model on both workers
    ref_losses, ref_weights = reference()
    np.testing.assert_allclose(results[0].losses, ref_losses[2:], rtol=0, atol=1e-5)
    # The final weights, saved by rank 0 in the lab's format, are the uninterrupted run's.
    import keras

    assert sorted(p.name for p in model_dir.iterdir()) == sorted([METADATA_FILE, MODEL_FILE])
    assert not [p for p in model_dir.parent.iterdir()  # no staging folder left behind
                if p.name.startswith(f".{model_dir.name}")]
    saved = keras.saving.load_model(model_dir / MODEL_FILE)
    for got, want in zip(saved.get_weights(), ref_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_more_workers_than_slots_fail_at_once_with_the_fix(spark):
    started = time.monotonic()
    with pytest.raises(distributed.NotEnoughSlotsError,
                       match="3 workers asked for, but this application runs 2 tasks at once"):
        distributed.train_distributed(spark, tiny_train, workers=3, run_dir="/nonexistent")
    assert time.monotonic() - started < 5  # Spark's own check would retry for ~10 minutes
