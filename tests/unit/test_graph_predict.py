"""tf_setup.graph_predict with a real (tiny) Keras model on TensorFlow: same numbers as the
eager call, one trace for every batch size, preprocessing inside the graph."""

import numpy as np
import pytest

from lab_utils.common import tensorflow as tf_setup


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(2, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def test_same_outputs_as_the_eager_call_and_one_trace(model):
    predict = tf_setup.graph_predict(model)
    rng = np.random.default_rng(0)
    for n in (1, 5, 64):
        pixels = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
        expected = np.asarray(model(pixels.astype(np.float32), training=False))
        got = predict(pixels)
        assert got.shape == (n, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert predict.graph.experimental_get_tracing_count() == 1


def test_preprocessing_runs_inside_the_graph(model):
    predict = tf_setup.graph_predict(model, lambda x: 255.0 - x)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    expected = np.asarray(model(255.0 - pixels.astype(np.float32), training=False))
    np.testing.assert_allclose(predict(pixels), expected, rtol=1e-5, atol=1e-6)
