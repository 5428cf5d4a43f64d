"""Where REST scoring's time goes, without Spark: ``python -m lab_utils.bench.rest_profile``.

The bench's CNN files (``make bench`` writes them), sent to the lab's model server in requests
of ``--batch`` images, timed in parts: the worker's encoding (files as ``{"b64": ...}``, or
decoded pixels as nested lists), the server's parse (with the decode, for files), the model and
the answer, each in this process; then every request over HTTP to a server in its own process,
with one and two request streams at once, and that server's CPU seconds from ``/proc``. Each
figure is the best of ``--repeats`` passes. docs/model-server.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable

from lab_utils.bench.cases import BenchError
from lab_utils.common import process


def best(fn: Callable[[], object], repeats: int) -> float:
    """The shortest of ``repeats`` timings of ``fn()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    stat = process.read_stat(pid)
    if stat is None:
        raise BenchError(f"no process {pid} to read CPU time from: the model server exited "
                         "(read its log)")
    return stat.cpu_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab_utils.bench.rest_profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="images (default 3000)")
    parser.add_argument("--batch", type=int, default=64, help="images per request (64)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per figure (3)")
    args = parser.parse_args(argv)

    import numpy as np
    import requests

    from lab_utils import config as lab_config
    from lab_utils.bench.cases import list_files, prepare_models
    from lab_utils.data import images
    from lab_utils.inference import keras_predict_fn, rest_scoring
    from lab_utils.inference.rest_udf import check_model_server
    from lab_utils.serving import payloads
    from lab_utils.serving.process import launch

    cfg = lab_config.load()
    model = prepare_models(cfg, ("cnn",), args.n)[0]
    spec = model.spec
    files = [f.read_bytes() for f in list_files(model.data_dir, args.n)]
    batches = [files[i:i + args.batch] for i in range(0, len(files), args.batch)]
    n, r = len(files), args.repeats
    print(f"{n} files, {len(batches)} requests of {args.batch}, {os.cpu_count()} CPUs")

    def decoded(batch: list[bytes]) -> np.ndarray:
        return np.stack([images.decode_image(f, spec.image_size) for f in batch])

    bodies = {"b64": [rest_scoring.encode_b64(b) for b in batches],
              "pixels": [rest_scoring.encode_instances(decoded(b)) for b in batches]}
    encoders = {"b64": lambda: [rest_scoring.encode_b64(b) for b in batches],
                "pixels": lambda: [rest_scoring.encode_instances(decoded(b)) for b in batches]}
    for payload, body in bodies.items():
        def parse(body: list[bytes] = body) -> None:
            for x in body:
                payloads.parse_predict_body(x, spec)

        size = sum(map(len, body)) / n
        print(f"{payload:>6}: {size / 1024:5.1f} KiB per image; worker encode "
              f"{best(encoders[payload], r):.3f} s; server parse"
              f"{' + decode' if payload == 'b64' else ''} {best(parse, r):.3f} s")
    pixels = [payloads.parse_predict_body(b, spec)[0] for b in bodies["b64"]]
    predict = keras_predict_fn(spec.model_file, threads=os.cpu_count() or 1)()
    predict(pixels[0])
    print(f"predict: {best(lambda: [predict(p) for p in pixels], r):.3f} s")
    answers = [predict(p).tolist() for p in pixels]
    encode_answers = best(lambda: [json.dumps({"predictions": a}) for a in answers], r)
    print(f"answer JSON: {encode_answers:.3f} s")

    served = cfg.share_dir / "output" / "bench" / "rest-profile-models"
    served.mkdir(parents=True, exist_ok=True)
    link = served / spec.path.name
    if not link.exists():
        link.symlink_to(spec.path, target_is_directory=True)
    with launch(served) as server:
        check_model_server(server.url, spec.path.name)
        url = f"{server.url}/v1/models/{spec.path.name}:predict"
        sessions = [requests.Session(), requests.Session()]

        def stream(part: list[bytes], session: requests.Session) -> None:
            for body in part:
                answer = session.post(url, data=body, headers={"Content-Type":
                                                               "application/json"})
                answer.raise_for_status()

        trip = best(lambda: [sessions[0].get(f"{server.url}/healthz") for _ in range(50)], r)
        print(f"HTTP round trip (GET /healthz): {trip / 50 * 1e3:.2f} ms")
        for payload in ("b64", "pixels"):
            stream(bodies[payload][:2], sessions[0])  # warm
            for k in (1, 2):
                parts = [bodies[payload][i::k] for i in range(k)]

                def run(parts: list[list[bytes]] = parts) -> None:
                    threads = [threading.Thread(target=stream, args=(part, session))
                               for part, session in zip(parts, sessions, strict=False)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()

                cpu0 = cpu_seconds(server.proc.pid) if server.proc else float("nan")
                seconds = best(run, r)
                cpu = (cpu_seconds(server.proc.pid) - cpu0) / r if server.proc else float("nan")
                print(f"{payload:>6}, {k} stream(s): {seconds:.3f} s = {n / seconds:,.0f} "
                      f"rows/s; server CPU {cpu:.2f} s per pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
