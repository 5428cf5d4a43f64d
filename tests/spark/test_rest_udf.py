"""``rest_udf`` in Spark tasks against a server that is down: the breaker of each task marks
its remaining rows with the reason instead of waiting through every batch's retries."""

from __future__ import annotations

import io
import time

from PIL import Image

from lab_utils.inference import rest_scoring
from tests.utils import servers
from tests.utils.fake_models import write_model


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_down_server_opens_each_tasks_breaker(local_spark, tmp_path):
    model = write_model(tmp_path / "tiny")
    url = servers.closed_port_url()
    udf = rest_scoring.rest_udf(model, url, check=False, batch_size=2, retries=1, backoff=0.01,
                                backoff_max=0.05, breaker_failures=2)
    rows = [(f"f{i:02d}.png", png(10 * i)) for i in range(12)]
    df = local_spark.createDataFrame(rows, "path string, content binary").coalesce(1)
    began = time.monotonic()
    out = (df.select("path", udf("path", "content").alias("r")).select("path", "r.*")
           .toPandas().sort_values("path").reset_index(drop=True))
    seconds = time.monotonic() - began
    assert len(out) == 12 and out["prediction"].isna().all()
    assert out["error"][:4].str.startswith(f"gave up after 2 attempts at {url}/v1/models/tiny:"
                                           "predict: connection failed").all()
    assert out["error"][4:].str.startswith(
        f"not sent: circuit breaker open after 2 failed micro-batches in a row at {url} "
        "(breaker_failures=2)").all()
    assert list(out["attempts"]) == [2] * 4 + [0] * 8
    assert seconds < 120  # generous: one local job; the requests themselves take milliseconds
