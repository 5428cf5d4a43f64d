"""The benchmark's peers: Ray Data and Daft, same files, same decode, same model, same cores.

Run as ``python -m lab_utils.bench.peers`` by :func:`lab_utils.bench.references.run_peers`, one
process per engine (like the baseline), so each engine's runtime, threads and memory are its
own. It reads one JSON object on stdin::

    {"engine": "ray" | "daft", "kind": "keras" | "resnet50", "model_file": ...,
     "class_names": [...], "size": [h, w], "files": [...], "sizes": [...], "cores": C,
     "batch": B, "marks": "<folder>"}

and prints one JSON line per size (:func:`window_result`). The engines differ only in the
plumbing: every model instance decodes and predicts with :func:`lab_utils.inference.score_images`
and the predict function of :func:`lab_utils.bench.baseline.load_predict`, with one TensorFlow
thread per instance and one instance per core (as Spark runs one 1-core task per core).

* **Ray Data** (``ray.init(num_cpus=C)``): ``read_binary_files`` of the N files, materialised in
  the object store before timing (Spark's input is cached too), then ``map_batches`` with a
  callable class, ``concurrency=C`` actors of ``num_cpus=1``, ``batch_size=B``,
  ``batch_format="numpy"``: the pattern of Ray's batch-inference guide for CPUs (one actor per
  CPU, the model loaded once per actor in ``__init__``). Consumed to the last row with
  ``iter_batches``.
* **Daft** (native runner, ``daft.set_runner_native(num_threads=C)``): the N files' bytes in a
  ``from_pydict`` frame, collected before timing, then a ``@daft.cls`` class (``max_concurrency=C``,
  ``use_process=True``: one process and one TensorFlow runtime per instance) whose
  ``@daft.method.batch(batch_size=B)`` scores a batch; the score column consumed to the last
  row with ``iter_partitions``.

Timing. Neither engine keeps a class's instances across queries: every run starts its actors
or processes and loads the model again, which the lab's Spark styles do once per Python worker.
So each instance appends ``ready <time>`` to ``marks/<pid>`` once its model is loaded and
has run the batch shape, and ``batch <start> <rows>`` for every batch; the steady state of a run
is the window from the moment the last instance is ready to the moment the driver has the last
row, over the rows whose batches started in that window (:func:`window_result`). What came before
(instances starting, model loads) is reported apart, as ``warmup_s``, and what came after (the
query closing: Daft stops its UDF processes then) as ``close_s``. A warm-up query comes first,
on the same number of rows as the Spark styles' (:func:`~lab_utils.bench.cases.warmup_rows`:
one full batch per core); the engine's own start is ``engine_start_s``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lab_utils.bench.baseline import rss_mb
from lab_utils.bench.cases import BenchError, warmup_rows

ENGINES = ("ray", "daft")


class Scorer:
    """One model instance of a peer engine: load once, then decode and predict per batch,
    writing its marks (ready time, batch starts, peak RSS) to ``marks/<pid>``."""

    def __init__(self, kind: str, model_file: str, class_names: Sequence[str],
                 size: Sequence[int], batch: int, marks: str,
                 load: Callable[[str, str, int], Callable] | None = None):
        from lab_utils.bench.baseline import load_predict
        from lab_utils.inference.scoring import score_images

        self.score_images = score_images
        self.predict = (load or load_predict)(kind, model_file, 1)
        self.class_names, self.batch = tuple(class_names), batch
        self.size = (int(size[0]), int(size[1]))
        self.predict(np.zeros((batch, *self.size, 3), np.uint8))  # the batch shape, traced
        self.mark = Path(marks, str(os.getpid()))
        self.peak = rss_mb()
        self._write(f"ready {time.time():.6f} {self.peak:.1f}")

    def _write(self, line: str) -> None:
        with open(self.mark, "a") as out:
            out.write(line + "\n")

    def score(self, paths: Iterable[Any], contents: Iterable[bytes]) -> np.ndarray:
        start = time.time()
        scored = self.score_images(list(paths), list(contents), self.predict, self.class_names,
                                   self.size, batch_size=self.batch)
        self.peak = max(self.peak, rss_mb())
        self._write(f"batch {start:.6f} {len(scored)} {time.time():.6f} {self.peak:.1f}")
        return scored["confidence"].to_numpy(np.float32)


def read_marks(marks: Path) -> dict[str, dict[str, Any]]:
    """``{pid: {"ready": [times], "batches": [(start, rows, end)], "peak_rss_mb": MB}}``."""
    out: dict[str, dict[str, Any]] = {}
    for path in marks.iterdir():
        record: dict[str, Any] = {"ready": [], "batches": [], "peak_rss_mb": 0.0}
        for line in path.read_text().splitlines():
            word, *values = line.split()
            if word == "ready":
                record["ready"].append(float(values[0]))
            elif word == "batch":
                record["batches"].append((float(values[0]), int(values[1]), float(values[2])))
            record["peak_rss_mb"] = max(record["peak_rss_mb"], float(values[-1]))
        out[path.name] = record
    return out


def window_result(marks: dict[str, dict[str, Any]], began: float, ended: float,
                  rows_out: int) -> dict[str, Any]:
    """The steady state of one run from its instances' marks.

    The window opens when the last instance is ready (its model loaded) and closes when the
    driver has the last row (``ended``); ``rows`` counts the rows of the batches that started
    inside it. When fewer than half the rows started there (small N: the instance that was
    ready first did most of the work), the window opens at the first instance's ready time
    instead and counts every row (``window``: ``"all ready"`` or ``"first ready"``; the latter
    charges the engine for its other instances' start). ``warmup_s`` is what came before the
    window: instances starting and loading the model. ``tail_s``: from the end of the last batch
    to the driver having every row (results moved back, the query closed).
    """
    readies = [max(m["ready"]) for m in marks.values() if m["ready"]]
    if not readies:
        raise BenchError("no model instance reported ready")
    batches = [b for m in marks.values() for b in m["batches"]]
    window, opened = "all ready", max(readies)
    rows = sum(r for start, r, _ in batches if start >= opened)
    if rows < rows_out / 2:
        window, opened = "first ready", min(readies)
        rows = sum(r for start, r, _ in batches if start >= opened)
    last = max((end for _, _, end in batches), default=ended)
    return {"rows": rows, "rows_out": rows_out, "seconds": ended - opened, "window": window,
            "warmup_s": opened - began, "wall_s": ended - began, "tail_s": ended - last,
            "worker_peak_rss_mb": max(m["peak_rss_mb"] for m in marks.values()),
            "python_workers": len(readies), "model_loads": sum(len(m["ready"])
                                                                for m in marks.values())}


# --------------------------------------------------------------------------- Ray Data


#: Input blocks per core for Ray Data (see :meth:`RayEngine.prepare`).
BLOCKS_PER_CORE = 8


class RayEngine:
    def __init__(self, args: dict[str, Any]):
        import ray

        self.ray, self.args = ray, args
        ray.init(num_cpus=args["cores"], include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        self.settings = {
            "ray": ray.__version__, "ray.init num_cpus": args["cores"],
            "object_store_memory_mb": round(
                ray.cluster_resources().get("object_store_memory", 0) / 2**20),
            "actors": f"concurrency={args['cores']}, num_cpus=1 each",
            "blocks": BLOCKS_PER_CORE * args["cores"],
            "batch_format": "numpy", "batch_size": args["batch"],
            "tf_threads_per_actor": 1}

    def prepare(self, files: list[str]):
        # Blocks are what Ray hands to actors, several per actor in flight: with one block per
        # core, the actor that loads its model first can take them all while the others are
        # still starting (seen: ResNet-50, 500 images, 2 blocks: one actor scored every row).
        # Eight per core keeps every actor fed, as Ray's guide advises (more blocks than actors).
        blocks = BLOCKS_PER_CORE * self.args["cores"]
        ds = self.ray.data.read_binary_files(files, include_paths=True,
                                             override_num_blocks=blocks)
        return ds.materialize()

    def score(self, data) -> tuple[int, float]:
        """Score every row; ``(rows, time.time() when the driver had the last one)``."""
        args = self.args

        class RayScorer:
            def __init__(self):
                self.scorer = Scorer(args["kind"], args["model_file"], args["class_names"],
                                     args["size"], args["batch"], args["marks"])

            def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return {"confidence": self.scorer.score(batch["path"], batch["bytes"])}

        out = data.map_batches(RayScorer, concurrency=args["cores"], num_cpus=1,
                               batch_size=args["batch"], batch_format="numpy")
        rows, last = 0, time.time()
        for b in out.iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(b["confidence"])
            last = time.time()
        return rows, last

    def close(self) -> None:
        self.ray.shutdown()


# --------------------------------------------------------------------------- Daft


class DaftEngine:
    def __init__(self, args: dict[str, Any]):
        import daft

        self.daft, self.args = daft, args
        daft.set_runner_native(num_threads=args["cores"])
        self.settings = {"daft": daft.__version__, "runner": f"native, num_threads={args['cores']}",
                         "class": f"max_concurrency={args['cores']}, use_process=True",
                         "batch_size": args["batch"], "tf_threads_per_instance": 1}

    def prepare(self, files: list[str]):
        contents = [Path(p).read_bytes() for p in files]
        return self.daft.from_pydict({"path": files, "content": contents}).collect()

    def score(self, data) -> tuple[int, float]:
        """Score every row; ``(rows, time.time() when the driver had the last one)``."""
        daft, args = self.daft, self.args

        @daft.cls(max_concurrency=args["cores"], use_process=True)
        class DaftScorer:
            def __init__(self, marks: str):
                self.scorer = Scorer(args["kind"], args["model_file"], args["class_names"],
                                     args["size"], args["batch"], marks)

            @daft.method.batch(return_dtype=daft.DataType.float32(), batch_size=args["batch"])
            def __call__(self, path, content):
                return self.scorer.score(path.to_pylist(), content.to_pylist())

        scorer = DaftScorer(args["marks"])
        out = data.select(scorer(data["path"], data["content"]).alias("confidence"))
        rows, last = 0, time.time()
        for part in out.iter_partitions():
            scores = part.to_pydict()["confidence"]
            if any(s is None for s in scores):
                raise BenchError("Daft returned rows without a score")
            rows += len(scores)
            last = time.time()
        return rows, last

    def close(self) -> None:
        pass


def run(args: dict[str, Any], out=sys.stdout) -> list[dict[str, Any]]:
    """Warm up, then time every size; print and return one record per size."""
    marks = Path(args["marks"])
    marks.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    engine: RayEngine | DaftEngine = (RayEngine if args["engine"] == "ray" else DaftEngine)(args)
    start_s = time.perf_counter() - t0
    records = []
    try:
        warm = engine.prepare(args["files"][:warmup_rows(args["cores"], args["batch"])])
        t = time.perf_counter()
        engine.score(warm)
        warm_s = time.perf_counter() - t
        for n in args["sizes"]:
            data = engine.prepare(args["files"][:n])
            for mark in marks.iterdir():
                mark.unlink()
            began = time.time()
            rows_out, ended = engine.score(data)
            closed = time.time()
            if rows_out != n:
                raise BenchError(f"{args['engine']} returned {rows_out} rows for {n}")
            record = {"engine": args["engine"], "n": n, "engine_start_s": start_s,
                      "warmup_run_s": warm_s, "close_s": closed - ended,
                      "query_s": closed - began,
                      **window_result(read_marks(marks), began, ended, rows_out),
                      "driver_peak_rss_mb": rss_mb("VmHWM"),
                      "settings": engine.settings}
            print(json.dumps(record), file=out, flush=True)
            records.append(record)
    finally:
        engine.close()
    return records


def main() -> int:
    run(json.loads(sys.stdin.read()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
