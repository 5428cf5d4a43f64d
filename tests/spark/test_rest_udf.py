"""``rest_udf`` in Spark tasks: against a server that is down, the breaker of each task marks
its remaining rows with the reason instead of waiting through every batch's retries; against a
live server (fake model, in a thread of the test process), the image files sent as ``{"b64":
...}`` give the rows the pixel lists give, a corrupt file included; and a task with requests in
flight keeps that many at the server and gives the rows of one request at a time."""

from __future__ import annotations

import io
import time

import pandas as pd
import pytest
from PIL import Image

from lab_utils.inference.rest_client import RestOptions
from lab_utils.inference.rest_scoring import PayloadError
from lab_utils.inference.rest_udf import rest_udf
from lab_utils.serving import model_server
from tests.utils import servers
from tests.utils.fake_models import brightness_loader, write_model


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_down_server_opens_each_tasks_breaker(local_spark, tmp_path):
    model = write_model(tmp_path / "tiny")
    url = servers.closed_port_url()
    client = RestOptions(batch_size=2, retries=1, backoff=0.01, backoff_max=0.05,
                         breaker_failures=2)
    udf = rest_udf(model, url, check=False, client=client)
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


def test_auto_sends_image_files_and_gives_the_rows_of_pixel_lists(local_spark, tmp_path):
    model = write_model(tmp_path / "models" / "tiny")
    noise = Image.effect_noise((32, 32), 80).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    rows = [(f"f{i:02d}.png", png(20 * i)) for i in range(12)]
    rows[5] = ("f05.png", buffer.getvalue()[:200])  # truncated: the server refuses it
    rows[8] = ("f08.png", b"")
    df = local_spark.createDataFrame(rows, "path string, content binary").repartition(2)
    app = model_server.create_app(tmp_path / "models", loader=brightness_loader)
    with servers.in_thread(app) as url:
        outs = {}
        for payload in ("auto", "pixels"):
            udf = rest_udf(model, url, client=RestOptions(batch_size=4), payload=payload)
            outs[udf.payload] = (df.select("path", udf("path", "content").alias("r"))
                                 .select("path", "r.*").toPandas().sort_values("path")
                                 .reset_index(drop=True))
    assert sorted(outs) == ["b64", "pixels"]  # auto chose b64: the metadata declares images
    b64, pixels = outs["b64"], outs["pixels"]
    assert list(b64["path"]) == [r[0] for r in rows]
    assert list(b64["prediction"]) == list(pixels["prediction"])
    assert list(b64["error"].fillna("")) == list(pixels["error"].fillna(""))
    assert b64["confidence"].to_numpy() == pytest.approx(pixels["confidence"].to_numpy(),
                                                         nan_ok=True)
    assert b64["error"][5].startswith("corrupt or truncated image")
    assert b64["error"][8] == "empty file (0 bytes)"
    assert b64["error"].notna().sum() == 2 and b64["prediction"].notna().sum() == 10


def test_rest_udf_decides_the_payload_on_the_driver(local_spark, tmp_path):
    model = write_model(tmp_path / "models" / "tiny")
    down = servers.closed_port_url()
    with pytest.raises(PayloadError, match="payload='jpeg' is not one of"):
        rest_udf(model, down, payload="jpeg")  # before the server check
    assert rest_udf(model, down, check=False).payload == "pixels"
    assert rest_udf(model, down, check=False, payload="b64").payload == "b64"
    app = model_server.create_app(tmp_path / "models", loader=brightness_loader)
    with servers.in_thread(app) as url:
        assert rest_udf(model, url).payload == "b64"
        assert rest_udf(model, url, payload="pixels").payload == "pixels"


class CountInFlight:
    """ASGI middleware over the model server's app: holds each predict ``hold`` seconds and
    counts how many it holds at once (``peak``), so a test sees the requests in flight."""

    def __init__(self, app, hold: float):
        self.app, self.hold = app, hold
        self.now = self.peak = self.predicts = 0

    async def __call__(self, scope, receive, send):
        import asyncio

        if scope["type"] != "http" or not scope["path"].endswith(":predict"):
            return await self.app(scope, receive, send)
        self.now += 1  # one event loop: no lock needed
        self.predicts += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.hold)
            return await self.app(scope, receive, send)
        finally:
            self.now -= 1


def test_requests_in_flight_in_a_task_give_the_same_rows(local_spark, tmp_path):
    """One task (one partition) with in_flight=4 keeps 4 predicts at the server at once, and
    gives the rows of one request at a time, a corrupt file's error included."""
    model = write_model(tmp_path / "models" / "tiny")
    rows = [(f"f{i:02d}.png", png(10 * i)) for i in range(24)]
    rows[7] = ("f07.png", b"")
    df = local_spark.createDataFrame(rows, "path string, content binary").coalesce(1)
    app = CountInFlight(model_server.create_app(tmp_path / "models", loader=brightness_loader),
                        hold=0.1)
    outs, peaks = {}, {}
    with servers.in_thread(app) as url:
        for in_flight in (1, 4):
            udf = rest_udf(model, url, client=RestOptions(batch_size=2, in_flight=in_flight))
            app.peak = 0
            outs[in_flight] = (df.select("path", udf("path", "content").alias("r"))
                               .select("path", "r.*").toPandas())
            peaks[in_flight] = app.peak
    assert peaks == {1: 1, 4: 4}  # 12 requests of 0.1 s each, from one task
    one, four = outs[1], outs[4]
    assert list(four["path"]) == [r[0] for r in rows]  # the task's rows in their order
    pd.testing.assert_frame_equal(one, four)
    assert four["error"][7] == "empty file (0 bytes)"
    assert four["prediction"].notna().sum() == 23
    assert set(four["attempts"][four["error"].isna()]) == {1}
