"""The benchmark's baseline: one plain Python process, no Spark, same decode and same model.

Run as ``python -m lab_utils.bench.baseline`` by :func:`lab_utils.bench.references.run_baselines`,
in a process of its own so that its TensorFlow threads and memory are its own (the Spark styles
it is compared with run in other processes too). It reads one JSON object on stdin::

    {"kind": "keras" | "resnet50", "model_file": ..., "files": [...], "sizes": [...],
     "size": [h, w], "threads": N, "batch": B}

and prints one JSON line per size and mode: ``{"n", "mode", "load_s", "seconds", "rows",
"peak_rss_mb"}``. Two modes are timed on the first ``n`` files (``"modes"``, optional, picks):

* ``parallel``: the best one process can do on these cores. Pillow decodes outside the GIL, so
  ``threads`` decoder threads run in parallel, and the next batch is decoded while the model
  runs on this one; TensorFlow uses ``threads`` intra-op threads.
* ``naive``: decode, then predict, in one thread: the baseline most published comparisons use.
  With ``threads`` 1 (TensorFlow on one thread too) it is the single-threaded per-image cost of
  decode plus model that the all-cores ideal scales (:func:`ideal_rows_per_s`).

The model is loaded once and its load time (first trace included) is reported with each size.
Every batch shape the timed loops use runs once before timing (kernels are set up per shape),
so neither mode pays that for the other.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak (``VmHWM``) in MB, from /proc.

    Not ``getrusage``: its ``ru_maxrss`` survives ``exec``, so a process started by the
    benchmark would report the benchmark's own peak when that was larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_predict(kind: str, model_file: str, threads: int) -> Callable[[np.ndarray], Any]:
    """The predict function the Spark styles use, for ``kind``."""
    from lab_utils import inference
    from lab_utils.common import tensorflow as tf_setup

    tf_setup.configure_tensorflow(threads)
    if kind == "resnet50":
        from lab_utils.inference import resnet

        return resnet.predict_fn_from_path(model_file)()
    return inference.keras_predict_fn(model_file, threads=threads)()


class Loops:
    """The two timed loops over chunks of encoded images."""

    def __init__(self, predict, size: tuple[int, int], threads: int):
        from lab_utils.data import images

        self.predict, self.size, self.decode = predict, size, images.decode_image
        self.decoders = ThreadPoolExecutor(threads)
        self.ahead = ThreadPoolExecutor(1)

    def decode_parallel(self, chunk: Sequence[bytes]) -> np.ndarray:
        return np.stack(list(self.decoders.map(lambda c: self.decode(c, self.size), chunk)))

    def decode_serial(self, chunk: Sequence[bytes]) -> np.ndarray:
        return np.stack([self.decode(c, self.size) for c in chunk])

    def parallel(self, chunks: Sequence[Sequence[bytes]]) -> int:
        done = 0
        pending = self.ahead.submit(self.decode_parallel, chunks[0])
        for k in range(len(chunks)):
            x = pending.result()
            if k + 1 < len(chunks):
                pending = self.ahead.submit(self.decode_parallel, chunks[k + 1])
            done += len(self.predict(x))
        return done

    def naive(self, chunks: Sequence[Sequence[bytes]]) -> int:
        return sum(len(self.predict(self.decode_serial(chunk))) for chunk in chunks)

    def close(self) -> None:
        self.decoders.shutdown()
        self.ahead.shutdown()


def run(args: dict[str, Any], out=sys.stdout) -> list[dict[str, Any]]:
    """Time both loops for every size in ``args``; print and return one record per run."""
    from lab_utils.data import images

    t0 = time.perf_counter()
    predict = load_predict(args["kind"], args["model_file"], args["threads"])
    contents = [Path(p).read_bytes() for p in args["files"]]
    size = tuple(args["size"])
    first = images.decode_image(contents[0], size)
    predict(np.stack([first]))  # the first call traces
    load = time.perf_counter() - t0
    batch = args["batch"]
    for rows in sorted({batch, *(n % batch for n in args["sizes"])} - {0}):
        predict(np.stack([first] * rows))
    loops = Loops(predict, size, args["threads"])
    records = []
    try:
        for n in args["sizes"]:
            chunks = [contents[i:min(i + batch, n)] for i in range(0, n, batch)]
            for mode, loop in (("parallel", loops.parallel), ("naive", loops.naive)):
                if mode not in args.get("modes", ("parallel", "naive")):
                    continue
                start = time.perf_counter()
                done = loop(chunks)
                seconds = time.perf_counter() - start
                record = {"n": n, "mode": mode, "load_s": load, "seconds": seconds,
                          "rows": done, "peak_rss_mb": rss_mb("VmHWM")}
                print(json.dumps(record), file=out, flush=True)
                records.append(record)
    finally:
        loops.close()
    return records


def ideal_rows_per_s(single_thread_rows: int, single_thread_seconds: float, cores: int) -> float:
    """The all-cores ideal: the per-image cost of decode plus model in one single-threaded
    process, times the cores (perfect scaling, no transfer, no coordination)."""
    return cores * single_thread_rows / single_thread_seconds


def main() -> int:
    run(json.loads(sys.stdin.read()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
