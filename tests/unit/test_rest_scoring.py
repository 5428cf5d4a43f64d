"""The REST scoring core without Spark: per-row results and errors with fake post functions,
the breaker and the task deadline against broken servers, image files (b64) against pixels, and
a task's whole path against a real server on loopback (fake model)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from lab_utils.inference import rest_client, rest_scoring
from tests.utils import servers

CLASSES = ("dark", "light")


def png(value: int, size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def fake_post(answers):
    """A post function answering from a list of PostResults (or callables of the batch)."""
    seen = []

    def post_fn(pixels):
        seen.append(len(pixels))
        answer = answers.pop(0)
        return answer(pixels) if callable(answer) else answer

    return post_fn, seen


def brightness(pixels):
    light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
    return rest_client.PostResult(np.stack([1 - light, light], axis=1).tolist(), 1)


def test_rows_in_order_bad_files_and_failed_batches_marked():
    contents = [png(10), b"", png(250), png(240), b"garbage", png(5)]
    failed = rest_client.PostResult(None, 4, "gave up after 4 attempts at X: HTTP 503")
    post_fn, seen = fake_post([brightness, failed])
    out = rest_scoring.score_images_rest([f"f{i}" for i in range(6)], contents, post_fn,
                                         CLASSES, (4, 4), batch_size=2)
    assert seen == [2, 2]  # four decodable images in batches of two; bad files never sent
    assert list(out["prediction"]) == ["dark", None, "light", None, None, None]
    assert out["confidence"][0] == pytest.approx(1 - 10 / 255, abs=1e-3)
    assert "empty file" in out["error"][1] and "not an image" in out["error"][4]
    assert out["error"][3] == out["error"][5] == failed.error  # exactly the failed batch's rows
    assert list(out["attempts"]) == [1, 0, 1, 4, 0, 4]
    assert len(out) == len(contents)


def test_wrong_answer_shape_is_explained():
    post_fn, _ = fake_post([rest_client.PostResult([[0.1, 0.2, 0.7]], 1)])
    out = rest_scoring.score_images_rest(["a"], [png(1)], post_fn, CLASSES, (4, 4))
    assert "answered shape [1, 3] for 1 images; expected [1, 2]" in out["error"][0]


def test_fail_fast_raises_naming_the_file_and_the_cause():
    post_fn, _ = fake_post([rest_client.PostResult(None, 3, "gave up after 3 attempts")])
    with pytest.raises(rest_scoring.RestScoringError,
                       match="1 images from a.png on could not be scored: gave up after 3"):
        rest_scoring.score_images_rest(["a.png"], [png(1)], post_fn, CLASSES, (4, 4),
                                       fail_fast=True)


def test_the_breaker_opens_after_failed_batches_in_a_row_and_a_success_resets_it():
    down = rest_client.PostResult(None, 3, "gave up after 3 attempts at X: connection failed",
                                   unavailable=True)
    refused = rest_client.PostResult(None, 1, "X refused the request: HTTP 400: bad")
    # down, down, scored (reset), down, refused (neither counts nor resets), down, down: open
    post_fn, seen = fake_post([down, down, brightness, down, refused, down, down])
    guard = rest_client.TaskGuard(rest_client.RestOptions(breaker_failures=3), "X")
    out = rest_scoring.score_images_rest([f"f{i}" for i in range(10)], [png(9)] * 10, post_fn,
                                         CLASSES, (4, 4), batch_size=1, guard=guard)
    assert seen == [1] * 7  # no request after the breaker opened
    reason = ("not sent: circuit breaker open after 3 failed micro-batches in a row at X "
              "(breaker_failures=3); last error: gave up after 3 attempts at X: connection "
              "failed")
    assert list(out["error"][7:]) == [reason] * 3 and list(out["attempts"][7:]) == [0] * 3
    assert out["prediction"][2] == "dark" and out["error"][4] == refused.error
    # The task's next batch: neither decoded nor sent (the empty file gets the reason too).
    later = rest_scoring.score_images_rest(["g0", "g1"], [png(9), b""], post_fn, CLASSES,
                                           (4, 4), batch_size=1, guard=guard)
    assert list(later["error"]) == [reason] * 2 and seen == [1] * 7
    with pytest.raises(rest_scoring.RestScoringError, match="2 images from g0 on were not "
                                                            "scored: not sent: circuit breaker"):
        rest_scoring.score_images_rest(["g0", "g1"], [png(9)] * 2, post_fn, CLASSES, (4, 4),
                                       guard=guard, fail_fast=True)


class CountingSession(requests.Session):
    def __init__(self):
        super().__init__()
        self.posts = 0

    def post(self, *args, **kwargs):
        self.posts += 1
        return super().post(*args, **kwargs)


def run_task(url, options, rows=20, per_batch=8):
    """Score ``rows`` images as one task of the UDF does, in Arrow batches of ``per_batch``."""
    paths, contents = [f"f{i:02d}" for i in range(rows)], [png(i) for i in range(rows)]
    batches = ((pd.Series(paths[i:i + per_batch]), pd.Series(contents[i:i + per_batch]))
               for i in range(0, rows, per_batch))
    session = CountingSession()
    began = time.monotonic()
    out = pd.concat(rest_scoring.score_task(batches, f"{url}/v1/models/tiny:predict", options,
                                            CLASSES, (4, 4), where=url, session=session),
                    ignore_index=True)
    assert len(out) == rows and out["prediction"].isna().all()
    return out, session.posts, time.monotonic() - began


def test_a_down_server_costs_a_task_three_batches_then_its_rows_are_marked_at_once():
    url = servers.closed_port_url()
    options = rest_client.RestOptions(batch_size=2, retries=2, backoff=0.01, backoff_max=0.05)
    out, posts, seconds = run_task(url, options)
    assert posts == 3 * 3  # three batches of three attempts, then not one request more
    assert out["error"][:6].str.startswith(f"gave up after 3 attempts at {url}/v1/models/tiny:"
                                           "predict: connection failed").all()
    assert out["error"][6:].str.startswith(
        f"not sent: circuit breaker open after 3 failed micro-batches in a row at {url} "
        "(breaker_failures=3); last error: gave up after 3 attempts").all()
    assert list(out["attempts"]) == [3] * 6 + [0] * 14
    assert seconds < 10  # nine refused connections and six short backoffs


def test_a_server_that_never_answers_opens_the_breaker():
    with servers.never_answers() as url:
        options = rest_client.RestOptions(batch_size=2, read_timeout=0.2, retries=1,
                                           backoff=0.01, breaker_failures=2)
        out, posts, seconds = run_task(url, options, rows=10)
    assert posts == 2 * 2
    assert out["error"][:4].str.endswith("no answer within read_timeout=0.2s").all()
    assert out["error"][4:].str.startswith("not sent: circuit breaker open after 2 failed "
                                           "micro-batches in a row").all()
    assert seconds < 10  # four read timeouts of 0.2 s


def test_the_task_timeout_bounds_a_task_whatever_its_timeouts_and_retries():
    with servers.never_answers() as url:
        # Default read timeout (30 s) and retries (5): three minutes a batch without a deadline.
        options = rest_client.RestOptions(batch_size=2, breaker_failures=None, task_timeout=1.0)
        out, posts, seconds = run_task(url, options, rows=10)
    assert posts == 1  # the first attempt's read timeout was cut to the second left
    assert out["error"][:2].str.contains("left of task_timeout=1.0s").all()
    assert out["error"][2:].str.startswith("not sent: this task's task_timeout=1.0s passed "
                                           "(last error: ").all()
    assert list(out["attempts"]) == [1] * 2 + [0] * 8
    assert seconds < 10


@pytest.fixture
def live_server(tmp_path):
    """A real uvicorn on loopback serving a fake model, in a thread of this process."""
    with servers.fake_model_server(tmp_path) as url:
        yield url


# --------------------------------------------------------------------------- image files (b64)


def noise_png(seed: int, size=(4, 4)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encode_b64_is_tf_servings_binary_form():
    files = [bytes(range(256)), b"\x89PNG"]
    body = json.loads(rest_scoring.encode_b64(files))
    assert list(body) == ["instances"]
    assert [base64.b64decode(item["b64"]) for item in body["instances"]] == files
    assert all(set(item) == {"b64"} for item in body["instances"])


def test_small_files_go_as_they_are_large_ones_as_a_png_of_the_models_size():
    from lab_utils.data import images

    small, large = noise_png(1), noise_png(2, size=(120, 90))
    assert len(small) < 4096 < len(large)
    good, files, error = rest_scoring.prepare_files(
        ["s", "l", "e", "n", "bad"], [small, large, b"", None, b"x" * 5000], (4, 4),
        max_file_bytes=4096)
    assert good == [0, 1] and files[0] == small
    assert len(files[1]) < 200  # 4x4 pixels, not 120x90
    # Lossless: the server's decode of the PNG gives the pixels the original decodes to.
    assert np.array_equal(images.decode_image(files[1], (4, 4)),
                          images.decode_image(large, (4, 4)))
    assert error[:2] == [None, None]
    assert error[2] == error[3] == "empty file (0 bytes)"
    assert error[4] == "not an image file (Pillow cannot identify it)"
    with pytest.raises(rest_scoring.RestScoringError, match="bad: not an image file"):
        rest_scoring.prepare_files(["bad"], [b"x" * 5000], (4, 4), max_file_bytes=4096,
                                   fail_fast=True)


def file_brightness(files):
    """What the lab's server answers for files with the brightness model (the fake post)."""
    from lab_utils.data import images

    return brightness(np.stack([images.decode_image(f, (4, 4)) for f in files]))


def test_b64_sends_the_files_undecoded_and_gives_the_rows_of_pixels():
    contents = [png(10), b"", noise_png(3), png(250), noise_png(4, (64, 64)), png(5)]
    sent = []

    def post_fn(files):
        sent.append(list(files))
        return file_brightness(files)

    paths = [f"f{i}" for i in range(6)]
    out = rest_scoring.score_images_rest(paths, contents, post_fn, CLASSES, (4, 4),
                                         batch_size=3, payload="b64")
    pixels_post, _ = fake_post([brightness, brightness])
    pixels = rest_scoring.score_images_rest(paths, contents, pixels_post, CLASSES, (4, 4),
                                            batch_size=3)
    assert [len(batch) for batch in sent] == [3, 2]  # the empty file is never sent
    assert sent[0] == [contents[0], contents[2], contents[3]]  # as they are
    assert rest_scoring.default_max_file_bytes((4, 4)) == 4096 < len(contents[4])
    assert sent[1][1] != contents[4] and len(sent[1][1]) < 200  # 64 x 64: shrunk to 4 x 4
    pd.testing.assert_frame_equal(out, pixels)


def test_files_the_server_refuses_are_their_rows_errors_and_the_rest_is_sent_again():
    truncated = noise_png(5, (32, 32))[:300]
    contents = [png(10), truncated, png(250), b"garbage", png(200)]
    refused = rest_client.PostResult(None, 1, "X refused the request: HTTP 400: 2 of 4 image "
                                               "files cannot be used: ...", status=400)
    sent = []

    def post_fn(files):
        sent.append(list(files))
        return refused if len(sent) == 1 else rest_client.PostResult(
            file_brightness(files).outputs, 2)  # scored after one retry (a 503, say)

    paths = [f"f{i}" for i in range(5)]
    out = rest_scoring.score_images_rest(paths, contents, post_fn, CLASSES, (4, 4),
                                         batch_size=4, payload="b64")
    assert sent[1] == [contents[0], contents[2]] and sent[2] == [contents[4]]
    pixels_post, _ = fake_post([brightness, brightness])
    pixels = rest_scoring.score_images_rest(paths, contents, pixels_post, CLASSES, (4, 4),
                                            batch_size=4)
    # The same predictions and the same error texts as pixels (where the client decodes).
    pd.testing.assert_frame_equal(out.drop(columns="attempts"), pixels.drop(columns="attempts"))
    assert out["error"][1].startswith("corrupt or truncated image")
    # Sent once and refused: 1; sent, refused, sent again (2 attempts): 1 + 2. Batch two: 2.
    assert list(out["attempts"]) == [3, 1, 3, 1, 2]
    with pytest.raises(rest_scoring.RestScoringError, match="f1: corrupt or truncated"):
        sent.clear()
        rest_scoring.score_images_rest(paths, contents, post_fn, CLASSES, (4, 4),
                                       batch_size=4, payload="b64", fail_fast=True)


def test_a_refused_batch_of_good_files_says_how_to_send_pixels():
    refused = rest_client.PostResult(None, 1, "X refused the request: HTTP 400: expected "
                                               "pixels", status=400)
    post_fn, seen = fake_post([refused])
    out = rest_scoring.score_images_rest(["a", "b"], [png(1), png(2)], post_fn, CLASSES,
                                         (4, 4), payload="b64")
    assert seen == [2]  # not sent again: the server refused the payload, not a file
    assert list(out["error"]) == ["X refused the request: HTTP 400: expected pixels (sent as "
                                  "image files, payload='b64'; if the model takes tensors, not "
                                  "image files, pass payload='pixels' to send decoded pixels as "
                                  "nested lists)"] * 2


def test_b64_and_pixels_give_the_same_rows_over_http(live_server):
    """The whole path on a real server: files sent as b64, one of them corrupt, against the
    same rows sent as pixels."""
    contents = [png(v) for v in (0, 40, 90)] + [noise_png(6, (32, 32))[:300]] + [
        noise_png(s) for s in range(7, 12)] + [b"", noise_png(12, (64, 48))]
    paths = [f"f{i:02d}" for i in range(len(contents))]
    options = rest_client.RestOptions(batch_size=4)
    outs, posts = {}, {}
    for payload in ("b64", "pixels"):
        batches = iter([(pd.Series(paths), pd.Series(contents))])
        session = CountingSession()
        outs[payload] = pd.concat(rest_scoring.score_task(
            batches, f"{live_server}/v1/models/tiny:predict", options, CLASSES, (4, 4),
            session=session, payload=payload))
        posts[payload] = session.posts
    b64_out, pixels_out = outs["b64"], outs["pixels"]
    pd.testing.assert_frame_equal(b64_out.drop(columns="attempts"),
                                  pixels_out.drop(columns="attempts"))
    assert b64_out["error"].notna().tolist() == [False] * 3 + [True] + [False] * 5 + [True,
                                                                                      False]
    assert b64_out["prediction"].notna().sum() == 9
    # b64: 3 batches of 4, 4, 2 (the empty file is not sent), the first refused and sent again.
    assert posts == {"b64": 4, "pixels": 3}
    assert list(b64_out["attempts"]) == [2, 2, 2, 1] + [1] * 5 + [0, 1]


# --------------------------------------------------------------------------- hostile answers


def good_predictions(instances: list) -> list:
    """What the brightness model answers for pixel lists: [1 - light, light] per image."""
    pixels = np.asarray(instances, dtype=float)
    light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
    return np.stack([1 - light, light], axis=1).tolist()


#: Predictions for a batch of n images, by the model name the request went to.
HOSTILE = {
    "ragged": lambda n: [[0.2, 0.8]] + [[0.1, 0.2, 0.7]] * (n - 1),
    "strings": lambda n: [["high", "low"]] * n,
    "objects": lambda n: [{"probabilities": [0.1, 0.9]}] * n,
    "nan": lambda n: [[0.5, 0.5]] + [[0.2, math.nan]] * (n - 1),
    "all_nan": lambda n: [[math.nan, math.nan]] * n,
    "inf": lambda n: [[math.inf, 0.0]] * n,
    "out_of_range": lambda n: [[-3, 7]] * n,
    "count": lambda n: [[0.5, 0.5]] * (n - 1),
    "flat": lambda n: [0.5, 0.5],
}


def hostile_answer(name: str, n: int, instances: list):
    """The first and third requests get good predictions, the second a hostile answer."""
    good = {"predictions": good_predictions(instances)}
    if n != 1:
        return json.dumps(good).encode()
    if name == "page":
        return b"<html>a web page</html>"
    if name == "oversized":  # announced in Content-Length
        return json.dumps({**good, "padding": "x" * 300_000}).encode()
    if name == "oversized_stream":  # chunked: no length announced, only the bytes tell
        return iter([json.dumps(good)[:-1].encode() + b', "padding": "'] + [b"x" * 10_000] * 30
                    + [b'"}'])
    return json.dumps({"predictions": HOSTILE[name](len(instances))}).encode()


@pytest.fixture(scope="module")
def hostile_server():
    with servers.scripted_model_server(hostile_answer) as url:
        yield url


SAME = "expected [2, 2] probabilities for ('dark', 'light'): is it serving the same model?"
NOT_PROBABILITIES = ("not probabilities: each must be a finite number in [0, 1] (± 1e-05); a "
                     "model that diverged in training gives NaN or inf, one without a softmax "
                     "output gives values outside [0, 1]; none of the 2 is used")


@pytest.mark.parametrize("kind, error", [
    ("ragged", f"answered 2 predictions of unequal length (2 and 3 values) for 2 images; {SAME}"),
    ("strings", f'answered a string "high" (row 0), not a number; {SAME}'),
    ("objects", f'answered an object {{"probabilities": [0.1, 0.9]}} (row 0), not a number; '
                f"{SAME}"),
    ("nan", f"answered 2 predictions of 2 values, one of them NaN (row 1): {NOT_PROBABILITIES}"),
    ("all_nan", "answered 2 predictions of 2 values, one of them NaN (row 0, and 1 more row): "
                f"{NOT_PROBABILITIES}"),
    ("inf", "answered 2 predictions of 2 values, one of them inf (row 0, and 1 more row): "
            f"{NOT_PROBABILITIES}"),
    ("out_of_range", "answered 2 predictions of 2 values, one of them -3 (row 0, and 1 more "
                     f"row): {NOT_PROBABILITIES}"),
    # Already handled before: the same error, now naming the model.
    ("count", f"answered shape [1, 2] for 2 images; {SAME}"),
    ("flat", f"answered shape [2] for 2 images; {SAME}"),
])
def test_a_bad_answer_is_its_batchs_error_and_the_job_goes_on(hostile_server, kind, error):
    out = hostile_task(hostile_server, kind)
    assert out["error"][2] == out["error"][3] == f"model {kind} at {hostile_server} {error}"


def hostile_task(url: str, kind: str) -> pd.DataFrame:
    """Six images in three micro-batches to model ``kind``: the second batch gets the hostile
    answer, and exactly its rows carry an error; the others are scored."""
    paths, contents = [f"f{i}" for i in range(6)], [png(v) for v in (10, 250, 20, 240, 30, 230)]
    options = rest_client.RestOptions(batch_size=2, retries=0)
    out = pd.concat(rest_scoring.score_task(
        iter([(pd.Series(paths), pd.Series(contents))]), f"{url}/v1/models/{kind}:predict",
        options, CLASSES, (4, 4), where=url, model_name=kind), ignore_index=True)
    assert len(out) == 6  # rows in, rows out
    assert list(out["prediction"]) == ["dark", "light", None, None, "dark", "light"]
    assert out["confidence"][2:4].isna().all() and out["confidence"][[0, 1, 4, 5]].notna().all()
    assert out["error"][[0, 1, 4, 5]].isna().all()
    assert list(out["attempts"]) == [1] * 6  # not retried: the same answer would come again
    return out


@pytest.mark.parametrize("kind", ["oversized", "oversized_stream"])
def test_an_oversized_answer_is_cut_and_its_batchs_error(hostile_server, kind):
    out = hostile_task(hostile_server, kind)
    assert out["error"][2] == out["error"][3] == (
        f"{hostile_server}/v1/models/{kind}:predict answered more than 65792 bytes, the cap "
        "for this batch (rows x classes x 64 bytes + 64 KiB): cut, not read")


def test_an_html_page_is_still_its_batchs_error(hostile_server):
    out = hostile_task(hostile_server, "page")
    assert out["error"][2] == (f"{hostile_server}/v1/models/page:predict answered 200 without a "
                               """JSON "predictions" field: '<html>a web page</html>'""")


def test_a_dripping_answer_is_cut_at_the_task_timeout():
    # 48 bytes at a byte every 0.5 s: 24 s, though no socket read waits more than 0.5 s.
    body = json.dumps({"predictions": [[0.5, 0.5]] * 2}).encode().ljust(48)
    with servers.dripping_server(body, interval=0.5) as url:
        options = rest_client.RestOptions(batch_size=2, task_timeout=2.0)  # read_timeout=30
        out, posts, seconds = run_task(url, options, rows=6)
    assert seconds < 2.0 + 1.5  # the deadline, and a margin for a busy machine
    assert posts == 1
    assert out["error"][0] == out["error"][1]
    assert re.fullmatch(rf"task_timeout=2.0s passed after 1 attempts at {url}/v1/models/tiny:"
                        r"predict: answer not complete within the [\d.]+s left of task_timeout="
                        r"2.0s \(\d+ of 48 bytes came\)", out["error"][0])
    assert out["error"][2:].str.startswith("not sent: this task's task_timeout=2.0s passed").all()
