"""Rows/s of the lab's partition predictor on the GPU and on the CPU of the same machine.

A benchmark, not a test: it reports, it asserts no timing. Without Spark: it times
``PartitionPredictor._predict_partition`` (the body of every task) on the lab's digits CNN
(32x32, PNG/JPEG digits) and on ResNet-50 (``weights=None``, seed 0; 256-pixel synthetic JPEGs
resized to 224x224), with decode-only and model-only rates on the same rows and the peak GPU
memory of the timed loop. Under TensorFlow it uses the lab's own loader, under
``KERAS_BACKEND=torch`` the backend-agnostic one of ``tests.utils.gpu``. From the repository
root::

    make bench-gpu                                  # or: python -m tests.gpu.bench
    KERAS_BACKEND=torch python -m tests.gpu.bench --out results/   # writes gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lab_utils.common.saved_model import load_spec
from lab_utils.data import images
from lab_utils.inference import image_partition_predictor, scoring
from tests.utils import gpu as gpu_utils

SIZES = {"digits": {"gpu": 8192, "cpu": 8192}, "resnet50": {"gpu": 4096, "cpu": 384}}
SMALL = {"digits": {"gpu": 512, "cpu": 512}, "resnet50": {"gpu": 32, "cpu": 32}}


def build_resnet50(folder: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    with keras.device("cpu"):
        net = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000)
    net.save(folder / "model.keras")
    (folder / "metadata.json").write_text(json.dumps({
        "class_names": [f"class_{i}" for i in range(1000)], "image_size": [224, 224],
        "channels": 3}))
    return folder


def measure(spec, rows: list[dict], device: str, batch_size: int) -> dict:
    """One model on one device: warm-up (model load included), then the timed loop."""
    on_gpu = device.startswith("/GPU")
    if gpu_utils.backend() == "tensorflow":
        loader = None  # the lab's own (tf.device + one traced graph)
    else:
        loader = gpu_utils.keras_loader(spec.model_file)
    predictor = image_partition_predictor(spec, loader, batch_size=batch_size,
                                          gpu_count=1 if on_gpu else 0)
    started = time.perf_counter()
    list(predictor._predict_partition(0, iter(rows[:batch_size])))
    warmup = time.perf_counter() - started
    if on_gpu:
        gpu_utils.reset_peak_memory()
    started = time.perf_counter()
    out = list(predictor._predict_partition(0, iter(rows)))
    loop = time.perf_counter() - started
    errors = [r for r in out if r[3] is not None]
    if errors:
        raise SystemExit(f"{len(errors)} rows failed, e.g. {errors[0]}")
    result = {"device": device, "rows": len(rows), "batch_size": batch_size,
              "warmup_seconds_incl_load": round(warmup, 2),
              "loop_rows_per_s": round(len(rows) / loop, 1)}
    if on_gpu:
        result["peak_gpu_mb"] = round(gpu_utils.peak_memory_bytes() / 2**20, 1)
    started = time.perf_counter()
    pixels = [images.decode_image(r["content"], spec.image_size) for r in rows]
    result["decode_only_rows_per_s"] = round(len(rows) / (time.perf_counter() - started), 1)
    predict = scoring._CACHE[(*predictor._cache_key, device)]
    batches = [np.stack(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    started = time.perf_counter()
    for batch in batches:
        np.asarray(predict(batch))
    result["model_only_rows_per_s"] = round(len(rows) / (time.perf_counter() - started), 1)
    gpu_utils.free_models()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_bench.json")
    parser.add_argument("--small", action="store_true", help="tiny sizes (a smoke run)")
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else SIZES
    devices = (["gpu"] if gpu_utils.gpu_count() else []) + ["cpu"]
    report = {"backend": gpu_utils.backend(), "results": []}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        digits = gpu_utils.train_digits_model(work / "model")
        good = [r for r in gpu_utils.digit_rows(work / "rows") if not r["path"].startswith("bad/")]
        cases = {"digits": (digits, good * (max(sizes["digits"].values()) // len(good) + 1)),
                 "resnet50": (load_spec(build_resnet50(work / "resnet50")),
                              gpu_utils.synthetic_jpegs(max(sizes["resnet50"].values()), 256))}
        for name, (spec, rows) in cases.items():
            for kind in devices:
                batch = 64 if (name, kind) == ("resnet50", "cpu") else 256
                result = measure(spec, rows[:sizes[name][kind]], f"/{kind.upper()}:0", batch)
                report["results"].append({"model": name, **result})
                print(json.dumps(report["results"][-1]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
