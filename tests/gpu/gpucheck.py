"""GPU check of the lab's partition predictor, without Spark and without TensorFlow on the GPU box.

Two steps:

``prepare`` (here, on the lab's own Python 3.11 venv, KERAS_BACKEND=tensorflow)
    Writes the inputs (real PNG/JPEG bytes of the lab's digits set plus the lab's bad-input
    corpus) and the TensorFlow-backend reference outputs of the lab's trained digits CNN:
    ``ref_pixels.npy`` (decoded by lab_utils.data.images), ``ref_probs.npy`` (model(x) on them) and
    ``ref_predictor.json`` (rows of ``image_partition_predictor`` with the lab's *default*
    loader, which uses ``tf.device``).

``check --device gpu|cpu`` (on the device: Python 3.12, KERAS_BACKEND=torch; or here with TF)
    1. imports lab_utils.{inference,images,models} (asserting neither TF nor pyspark is pulled
       in), checks ``select_device``'s three rules (Spark GPU resource through a fake
       ``pyspark.TaskContext``, index mod gpu_count, CPU) and how the ImportError path behaves;
    2. loads the TF-trained ``.keras`` file under the current backend on the chosen device and
       compares probabilities / argmax with the TF reference, on the very same pixels and on
       the device's own decode; runs ``PartitionPredictor._predict_partition`` with a
       backend-agnostic loader written here (the lab's default loader needs TensorFlow);
    3. measures rows/s of the predictor loop (decode included) for the digits CNN and
       ResNet-50 (weights=None, seed 0) at 224x224, on the GPU and on the CPU of the same
       machine, plus decode-only and model-only rates, and GPU memory per batch.

Every section is isolated: a failure is recorded in the JSON and the next section still runs.

Not a pytest test (CI has no GPU). Reproduce, from the repository root::

    LAB_SHARE_DIR=/tmp/gpucheck_share .venv/bin/python -m lab_utils.training.cnn   # the digits CNN
    mkdir -p .gpucheck && cp -r /tmp/gpucheck_share/models/digits_cnn .gpucheck/
    KERAS_BACKEND=tensorflow .venv/bin/python tests/gpu/gpucheck.py prepare \
        --images /tmp/gpucheck_share/data/images
    # on the GPU machine (Python 3.12 + PyTorch; keras, namex, optree carried as wheels):
    KERAS_BACKEND=torch python3 tests/gpu/gpucheck.py check --device gpu --out "$OUT"
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import pickle
import platform
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / ".gpucheck"  # inputs and references (gitignored); carried to the GPU machine
sys.path.insert(0, str(REPO))  # lab_utils travels with the tree; no install needed

DIGITS_DIR = HERE / "digits_cnn"
INPUTS = HERE / "inputs.pkl"
REF_PIXELS = HERE / "ref_pixels.npy"
REF_PROBS = HERE / "ref_probs.npy"
REF_PREDICTOR = HERE / "ref_predictor.json"

RESULTS: dict = {}
OUT = Path(".")


def log(*parts) -> None:
    print(*parts, flush=True)


def save() -> None:
    (OUT / "results.json").write_text(json.dumps(RESULTS, indent=2, default=str))


@contextlib.contextmanager
def section(name: str):
    log(f"=== {name}")
    started = time.perf_counter()
    RESULTS[name] = entry = {}
    try:
        yield entry
        entry["ok"] = entry.get("ok", True)
    except Exception as exc:  # noqa: BLE001 - record and go on with the next section
        entry["ok"] = False
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()[-3000:]
        log(entry["traceback"])
    entry["seconds"] = round(time.perf_counter() - started, 2)
    log(f"--- {name}: ok={entry['ok']} in {entry['seconds']} s")
    save()


# --------------------------------------------------------------------------- prepare (here)


def read_inputs() -> list[dict]:
    with open(INPUTS, "rb") as f:
        return pickle.load(f)


def prepare(args) -> int:
    import numpy as np

    from lab_utils.data import images
    from lab_utils.inference import image_partition_predictor
    from lab_utils.training.cnn import load_spec

    share = Path(args.images)
    rows: list[dict] = []
    for path, label in images.list_labelled_images(share):
        rows.append({"path": f"png/{label}/{path.name}", "content": path.read_bytes()})
    tmp = Path(args.tmp)
    jpeg_dir = tmp / "jpeg"
    images.build_image_dataset(jpeg_dir, image_format="jpeg")
    for path, label in images.list_labelled_images(jpeg_dir):
        rows.append({"path": f"jpeg/{label}/{path.name}", "content": path.read_bytes()})
    bad = images.write_bad_input_corpus(tmp / "bad")
    for name in sorted(bad):
        rows.append({"path": f"bad/{name}", "content": (tmp / "bad" / name).read_bytes()})
    with open(INPUTS, "wb") as f:
        pickle.dump(rows, f, protocol=4)
    log(f"{len(rows)} input rows, {sum(len(r['content']) for r in rows) / 1e6:.1f} MB")

    spec = load_spec(DIGITS_DIR)
    good_pixels, good_paths = [], []
    for row in rows:
        try:
            good_pixels.append(images.decode_image(row["content"], spec.image_size))
            good_paths.append(row["path"])
        except images.ImageError:
            pass
    pixels = np.stack(good_pixels)
    np.save(REF_PIXELS, pixels)
    import keras

    model = keras.saving.load_model(spec.model_file, compile=False)
    probs = np.concatenate([np.asarray(model(pixels[i:i + 256].astype(np.float32),
                                             training=False))
                            for i in range(0, len(pixels), 256)])
    np.save(REF_PROBS, probs.astype(np.float32))
    # The lab's real default loader (tf.device) through the real partition loop.
    predictor = image_partition_predictor(DIGITS_DIR, gpu_count=0)
    out = list(predictor._predict_partition(0, iter(rows)))
    fields = [f.strip().split(" ")[0] for f in predictor.schema.split(",")]
    REF_PREDICTOR.write_text(json.dumps({
        "backend": keras.backend.backend(), "keras": keras.__version__,
        "fields": fields, "rows": [list(r) for r in out], "good_paths": good_paths}))
    errors = sum(1 for r in out if r[3] is not None)
    log(f"reference: {len(pixels)} decoded, probs {probs.shape}, predictor rows {len(out)} "
        f"({errors} errors), backend {keras.backend.backend()}")
    return 0


# --------------------------------------------------------------------------- helpers (check)


def backend() -> str:
    import keras

    return keras.backend.backend()


def torch_or_none():
    if backend() != "torch":
        return None
    import torch

    return torch


def keras_device(lab_device: str) -> str:
    """The lab's TF-style '/GPU:0' / '/CPU:0' -> 'gpu:0' / 'cpu', which keras.device takes on
    every backend (the torch backend maps gpu -> cuda itself, but not the leading '/').

    Not 'cpu:0': under the torch backend keras.device('cpu:0') makes Variable's
    Parameter(...).to('cpu:0') copy into a plain tensor, which TorchLayer's ParameterDict then
    re-wraps with requires_grad=True, and loading a model with an int variable (Dropout's seed
    state) fails: "Only Tensors of floating point and complex dtype can require gradients"
    (seen on the device, first run)."""
    dev = lab_device.lstrip("/").lower()
    return "cpu" if dev.startswith("cpu") else dev


def make_loader(model_file: str, stats: dict):
    """A backend-agnostic ``model_loader(device) -> predict`` for PartitionPredictor.

    Written here because the lab's default loader uses ``tf.device`` and so needs TensorFlow.
    Same contract and same body as the lab's (load once with compile=False, call
    ``model(x.astype(float32), training=False)``), plus: keras.device instead of tf.device,
    torch.no_grad() on the torch backend, convert_to_numpy (CUDA tensors), memory stats.
    """

    def load(device: str):
        import keras
        import numpy as np

        torch = torch_or_none()
        dev = keras_device(device)
        stats.setdefault("loader_calls", []).append(device)
        started = time.perf_counter()
        with keras.device(dev):
            net = keras.saving.load_model(model_file, compile=False)
        stats["load_seconds"] = round(time.perf_counter() - started, 2)
        if torch is not None:
            stats["weights_device"] = str(net.weights[0].value.device)
        grad = torch.no_grad if torch is not None else contextlib.nullcontext
        on_cuda = torch is not None and dev.startswith(("gpu", "cuda"))
        per_batch = stats.setdefault("mem_after_batch_mb", []) if on_cuda else None

        def predict(pixels: np.ndarray) -> np.ndarray:
            with keras.device(dev), grad():
                out = keras.ops.convert_to_numpy(net(pixels.astype(np.float32),
                                                     training=False))
            if per_batch is not None:
                per_batch.append(round(torch.cuda.memory_allocated() / 2**20, 1))
            return out

        predict.net = net  # for the grad-mode probe
        return predict

    return load


def gpu_mem() -> dict:
    torch = torch_or_none()
    if torch is None or not torch.cuda.is_available():
        return {}
    return {"allocated_mb": round(torch.cuda.memory_allocated() / 2**20, 1),
            "max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "reserved_mb": round(torch.cuda.memory_reserved() / 2**20, 1)}


def reset_peak() -> None:
    torch = torch_or_none()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def free_models() -> dict:
    from lab_utils.inference import core as udfs_core

    udfs_core._CACHE.clear()
    gc.collect()
    torch = torch_or_none()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return gpu_mem()


def block_pyspark():
    """Make ``from pyspark import TaskContext`` raise ImportError (as on the device)."""
    saved = {k: v for k, v in sys.modules.items() if k == "pyspark" or k.startswith("pyspark.")}
    for k in saved:
        del sys.modules[k]
    sys.modules["pyspark"] = None
    return saved


def fake_pyspark(resources: dict | None, *, ctx: bool = True):
    module = types.ModuleType("pyspark")

    class _Ctx:
        def resources(self):
            return resources

        def cpus(self):
            return 1

    class TaskContext:
        @staticmethod
        def get():
            return _Ctx() if ctx else None

    module.TaskContext = TaskContext
    sys.modules["pyspark"] = module


def restore_pyspark(saved) -> None:
    sys.modules.pop("pyspark", None)
    sys.modules.update(saved)


def synthetic_jpegs(n: int, side: int, seed: int = 0) -> list[dict]:
    """n distinct photo-like JPEGs (smooth gradients + shapes + noise), side x side."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    rows = []
    for i in range(n):
        a, b, c = rng.uniform(0, 255, 3), rng.uniform(-120, 120, 3), rng.uniform(-120, 120, 3)
        base = a + b * xx[..., None] + c * yy[..., None]
        base += rng.normal(0, 12, (side, side, 3))
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, side - 20, 2)
            draw.ellipse([int(x0), int(y0), int(x0) + int(rng.integers(10, side // 2)),
                          int(y0) + int(rng.integers(10, side // 2))],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        rows.append({"path": f"synthetic/{i:05d}.jpg", "content": buf.getvalue()})
    return rows


def run_partition(predictor, rows, index: int = 0) -> tuple[list, float]:
    started = time.perf_counter()
    out = list(predictor._predict_partition(index, iter(rows)))
    return out, time.perf_counter() - started


def throughput(name: str, spec_dir: Path, rows: list[dict], lab_device: str, gpu_count: int,
               batch_size: int, entry: dict) -> None:
    """Predictor loop rows/s (decode included) + decode-only + model-only, one device."""
    import numpy as np

    from lab_utils import inference
    from lab_utils.data import images
    from lab_utils.inference import core as udfs_core
    from lab_utils.inference import image_partition_predictor

    stats: dict = {}
    loader = make_loader(str(spec_dir / "model.keras"), stats)
    predictor = image_partition_predictor(spec_dir, loader, batch_size=batch_size,
                                          gpu_count=gpu_count)
    assert inference.select_device(0, gpu_count) == lab_device, lab_device
    reset_peak()
    warm, warm_s = run_partition(predictor, rows[:batch_size])  # loads the model + warms up
    entry["warmup_seconds_incl_load"] = round(warm_s, 2)
    entry["load_seconds"] = stats.get("load_seconds")
    entry["weights_device"] = stats.get("weights_device")
    mem_before = list(stats.get("mem_after_batch_mb", []))
    reset_peak()
    out, seconds = run_partition(predictor, rows)
    errors = [r for r in out if r[3] is not None]
    assert len(out) == len(rows) and not errors, (len(out), errors[:3])
    entry["rows"] = len(rows)
    entry["batch_size"] = batch_size
    entry["loop_seconds"] = round(seconds, 3)
    entry["loop_rows_per_s"] = round(len(rows) / seconds, 1)
    entry["loader_calls"] = stats.get("loader_calls")  # must be one: cached per worker+device
    entry["load_counts"] = {str(k): v for k, v in inference.LOAD_COUNTS.items()
                            if k[0] == "partition"}
    per_batch = stats.get("mem_after_batch_mb")
    if per_batch is not None:
        timed = per_batch[len(mem_before):]
        entry["gpu_mem_after_each_batch_mb"] = timed
        entry["gpu_mem_growth_mb_first_to_last_batch"] = round(timed[-1] - timed[0], 1)
        entry["gpu_mem_timed_loop"] = gpu_mem()
    # decode-only and model-only, same rows, same batch size
    size = tuple(json.loads((spec_dir / "metadata.json").read_text())["image_size"])
    started = time.perf_counter()
    pixels = [images.decode_image(r["content"], size) for r in rows]
    decode_s = time.perf_counter() - started
    entry["decode_only_rows_per_s"] = round(len(rows) / decode_s, 1)
    key = ((*predictor._cache_key, lab_device) if hasattr(predictor, "_cache_key")
           else ("partition", id(loader), lab_device))  # before commit d1c88ca
    entry["cache_key_kind"] = "uuid made at construction" if hasattr(
        predictor, "_cache_key") else "id(model_loader)"
    predict = udfs_core._CACHE[key]
    batches = [np.stack(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    started = time.perf_counter()
    for b in batches:
        predict(b)
    model_s = time.perf_counter() - started
    entry["model_only_rows_per_s"] = round(len(rows) / model_s, 1)
    entry["first_predictions"] = [r[1] for r in out[:5]]
    if per_batch is not None and name == "resnet50":
        # Peak GPU memory of one forward pass by batch size (no_grad, as in the loader).
        sweep = {}
        for bs in (16, 64, 256):
            x = np.stack((pixels * (bs // len(pixels) + 1))[:bs])
            reset_peak()
            base_mb = torch_or_none().cuda.memory_allocated() / 2**20
            predict(x)
            sweep[bs] = round(torch_or_none().cuda.max_memory_allocated() / 2**20 - base_mb, 1)
        entry["peak_mb_above_resident_by_batch"] = sweep
    log(f"{name} on {lab_device}: loop {entry['loop_rows_per_s']} rows/s, decode-only "
        f"{entry['decode_only_rows_per_s']}, model-only {entry['model_only_rows_per_s']}, "
        f"{gpu_mem()}")
    del predict, batches, pixels
    entry["gpu_mem_after_free"] = free_models()


# --------------------------------------------------------------------------- check


def check(args) -> int:
    global OUT
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    want_gpu = args.device == "gpu"
    small = args.small

    with section("env") as e:
        import numpy as np
        import PIL

        e["python"] = sys.version
        e["platform"] = platform.platform()
        e["numpy"] = np.__version__
        e["pillow"] = PIL.__version__
        try:
            import pandas as pd

            e["pandas"] = pd.__version__
        except ImportError as exc:
            e["pandas"] = f"missing: {exc}"
        import keras

        e["keras"] = keras.__version__
        e["keras_file"] = keras.__file__
        e["backend"] = keras.backend.backend()
        e["tensorflow_importable"] = _importable("tensorflow")
        e["pyspark_importable"] = _importable("pyspark")
        torch = torch_or_none()
        if torch is not None:
            e["torch"] = torch.__version__
            e["cuda_available"] = torch.cuda.is_available()
            e["torch_cpu_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                e["gpu"] = torch.cuda.get_device_name(0)
                e["gpu_count"] = torch.cuda.device_count()
                e["cudnn"] = torch.backends.cudnn.version()
                e["tf32_defaults"] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                                      "cuda.matmul.allow_tf32":
                                          torch.backends.cuda.matmul.allow_tf32}
        try:
            e["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            e["nvidia_smi"] = f"n/a: {exc}"
        if want_gpu and not (torch is not None and torch.cuda.is_available()):
            raise RuntimeError("--device gpu needs the torch backend with CUDA")
        log(json.dumps(e, indent=1))

    with section("imports") as e:
        before = set(sys.modules)
        import lab_utils.data.images  # noqa: F401
        import lab_utils.inference  # noqa: F401
        import lab_utils.training.cnn  # noqa: F401

        new = set(sys.modules) - before
        e["pulled_in_tensorflow"] = any(m == "tensorflow" or m.startswith("tensorflow.")
                                        for m in new)
        e["pulled_in_pyspark"] = any(m == "pyspark" or m.startswith("pyspark.") for m in new)
        assert not e["pulled_in_tensorflow"] and not e["pulled_in_pyspark"], e

    with section("select_device") as e:
        from lab_utils.inference import select_device

        saved = block_pyspark()
        try:
            cases, bad = [], []

            def expect(label, index, gpu_count, want):
                got = select_device(index, gpu_count)
                cases.append([label, index, gpu_count, got, want])
                if got != want:
                    bad.append(cases[-1])

            for g in (0, 1, 2, 4):
                for i in range(6):
                    want = f"/GPU:{i % g}" if g else "/CPU:0"
                    expect("no pyspark (ImportError)", i, g, want)
            fake_pyspark(None, ctx=False)
            for g in (0, 1, 2):
                for i in range(4):
                    expect("TaskContext.get() is None", i, g, f"/GPU:{i % g}" if g else "/CPU:0")
            fake_pyspark({})
            for i in range(4):
                expect("task without gpu resource", i, 2, f"/GPU:{i % 2}")
            fake_pyspark({"gpu": types.SimpleNamespace(addresses=[])})
            expect("gpu resource with no address", 3, 2, "/GPU:1")
            fake_pyspark({"gpu": types.SimpleNamespace(addresses=["0"])})
            for i, g in ((0, 0), (5, 0), (7, 1), (3, 4)):
                expect("Spark gpu resource ['0']", i, g, "/GPU:0")
            fake_pyspark({"gpu": types.SimpleNamespace(addresses=["3", "5"])})
            expect("Spark gpu resource ['3','5']", 1, 1, "/GPU:3")
            e["cases"] = cases
            e["mismatches"] = bad
            # gpu_count=None asks TensorFlow; without TF (the device) it cannot answer.
            sys.modules["pyspark"] = None
            try:
                e["gpu_count_None"] = select_device(0, None)
            except Exception as exc:  # noqa: BLE001
                e["gpu_count_None"] = f"raised {type(exc).__name__}: {exc}"
        finally:
            restore_pyspark(saved)
        log(f"{len(cases)} cases, mismatches: {bad}; gpu_count=None -> {e['gpu_count_None']}")
        assert not bad

    with section("lab_default_loader_on_this_backend") as e:
        # What the lab's own code would hit here, checked without changing it.
        import keras
        import numpy as np

        from lab_utils.inference import image_partition_predictor

        lab_dev = "/GPU:0" if want_gpu else "/CPU:0"
        try:
            with keras.device(lab_dev):
                keras.ops.zeros((1,))
            e[f"keras.device('{lab_dev}')"] = "accepted"
        except Exception as exc:  # noqa: BLE001
            e[f"keras.device('{lab_dev}')"] = f"{type(exc).__name__}: {exc}"
        net = keras.saving.load_model(DIGITS_DIR / "model.keras", compile=False)
        x = np.zeros((2, 32, 32, 3), np.float32)
        try:
            np.asarray(net(x, training=False))
            e["np.asarray(net(x))"] = "works"
        except Exception as exc:  # noqa: BLE001
            e["np.asarray(net(x))"] = f"{type(exc).__name__}: {exc}"
        saved = block_pyspark()
        try:
            predictor = image_partition_predictor(DIGITS_DIR, gpu_count=1 if want_gpu else 0)
            rows = read_inputs()[:3]
            list(predictor._predict_partition(0, iter(rows)))
            e["default_loader"] = "works"
        except Exception as exc:  # noqa: BLE001
            e["default_loader"] = f"{type(exc).__name__}: {exc}"
        finally:
            restore_pyspark(saved)
        del net
        # keras.device spelling of the CPU, with a model holding an int variable (Dropout).
        for name in ("cpu:0", "cpu"):
            try:
                with keras.device(name):
                    m = keras.saving.load_model(DIGITS_DIR / "model.keras", compile=False)
                    keras.ops.convert_to_numpy(m(x, training=False))
                e[f"load_and_call_under_keras.device('{name}')"] = "works"
                del m
            except Exception as exc:  # noqa: BLE001
                e[f"load_and_call_under_keras.device('{name}')"] = (
                    f"{type(exc).__name__}: {str(exc)[-200:]}")
        free_models()
        log(json.dumps(e, indent=1))

    with section("parity_digits_cnn") as e:
        import keras
        import numpy as np

        from lab_utils.data import images
        from lab_utils.inference import image_partition_predictor
        from lab_utils.training.cnn import load_spec

        torch = torch_or_none()
        ref_pixels = np.load(REF_PIXELS)
        ref_probs = np.load(REF_PROBS)
        ref = json.loads(REF_PREDICTOR.read_text())
        e["reference"] = {"backend": ref["backend"], "keras": ref["keras"],
                          "images": int(len(ref_pixels))}
        spec = load_spec(DIGITS_DIR)
        rows = read_inputs()
        lab_dev = "/GPU:0" if want_gpu else "/CPU:0"

        def probs_on(pixels):
            predict = make_loader(str(spec.model_file), {})(lab_dev)
            return np.concatenate([predict(pixels[i:i + 256])
                                   for i in range(0, len(pixels), 256)])

        def compare(probs, label):
            diff = np.abs(probs - ref_probs)
            same = probs.argmax(1) == ref_probs.argmax(1)
            r = {"argmax_equal": int(same.sum()), "of": int(len(same)),
                 "max_abs_prob_diff": float(diff.max()),
                 "mean_abs_prob_diff": float(diff.mean()),
                 "within_1e-4": bool(diff.max() <= 1e-4 and same.all())}
            e[label] = r
            log(label, r)
            return r

        compare(probs_on(ref_pixels), "same_pixels_default_precision")
        if torch is not None and want_gpu:
            old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                compare(probs_on(ref_pixels), "same_pixels_tf32_off")
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
        # The device's own decode of the same bytes.
        good_paths = ref["good_paths"]
        by_path = {r["path"]: r["content"] for r in rows}
        mine = np.stack([images.decode_image(by_path[p], spec.image_size) for p in good_paths])
        pix_diff = np.abs(mine.astype(np.int16) - ref_pixels.astype(np.int16))
        e["decode_vs_reference"] = {"identical_images": int((pix_diff.reshape(len(mine), -1)
                                                             .max(1) == 0).sum()),
                                    "of": int(len(mine)), "max_pixel_diff": int(pix_diff.max())}
        # The real partition loop with the loader written here, via the modulo rule ...
        saved = block_pyspark()
        try:
            stats: dict = {}
            predictor = image_partition_predictor(
                spec, make_loader(str(spec.model_file), stats), batch_size=256,
                gpu_count=1 if want_gpu else 0)
            out, seconds = run_partition(predictor, rows, index=4)
            e["predictor_modulo_rule"] = _compare_rows(out, ref, stats, rows)
            e["predictor_modulo_rule"]["seconds"] = round(seconds, 2)
            if torch is not None and want_gpu:
                old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
                try:
                    out_fp32, _ = run_partition(predictor, rows, index=4)
                    e["predictor_modulo_rule_tf32_off"] = _compare_rows(out_fp32, ref, stats,
                                                                        rows)
                finally:
                    (torch.backends.cudnn.allow_tf32,
                     torch.backends.cuda.matmul.allow_tf32) = old
            # ... and via Spark's GPU-resource rule (fake TaskContext, gpu_count=0).
            if want_gpu:
                fake_pyspark({"gpu": types.SimpleNamespace(addresses=["0"])})
                stats2: dict = {}
                predictor2 = image_partition_predictor(
                    spec, make_loader(str(spec.model_file), stats2), batch_size=100,
                    gpu_count=0)
                out2, _ = run_partition(predictor2, rows, index=9)
                e["predictor_spark_gpu_resource_rule"] = _compare_rows(out2, ref, stats2, rows)
        finally:
            restore_pyspark(saved)
        e["gpu_mem_after_free"] = free_models()
        log(json.dumps({k: v for k, v in e.items() if k.startswith("predictor")}, indent=1))
        ok = e["same_pixels_default_precision"]["argmax_equal"] == len(ref_pixels)
        for key in ("predictor_modulo_rule", "predictor_modulo_rule_tf32_off",
                    "predictor_spark_gpu_resource_rule"):
            if key in e:
                ok = ok and e[key]["predictions_equal"] == e[key]["scored_rows"]
        e["ok"] = bool(ok)

    sizes = {"digits_gpu": 8192, "digits_cpu": 8192, "resnet_gpu": 4096, "resnet_cpu": 384,
             "resnet_probe": 64}
    if small:
        sizes = {"digits_gpu": 512, "digits_cpu": 512, "resnet_gpu": 32, "resnet_cpu": 32,
                 "resnet_probe": 8}
    devices = [("gpu", "/GPU:0", 1)] if want_gpu else []
    devices.append(("cpu", "/CPU:0", 0))

    saved = block_pyspark()
    try:
        base = [r for r in read_inputs() if not r["path"].startswith("bad/")]
        digit_rows = (base * (sizes["digits_gpu"] // len(base) + 1))
        for kind, lab_dev, g in devices:
            with section(f"throughput_digits_{kind}") as e:
                n = sizes[f"digits_{kind}"]
                throughput("digits_cnn", DIGITS_DIR, digit_rows[:n], lab_dev, g, 256, e)

        with section("resnet50_build") as e:
            import keras

            keras.utils.set_random_seed(0)
            resnet_dir = Path(args.tmp) / "resnet50"
            resnet_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            with keras.device("cpu"):
                net = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3),
                                                  classes=1000)
            e["params"] = int(net.count_params())
            net.save(resnet_dir / "model.keras")
            (resnet_dir / "metadata.json").write_text(json.dumps({
                "class_names": [f"class_{i}" for i in range(1000)],
                "image_size": [224, 224], "channels": 3}))
            del net
            gc.collect()
            e["build_and_save_seconds"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            n = max(sizes["resnet_gpu"], sizes["resnet_cpu"])
            jpegs = synthetic_jpegs(n, 256)
            e["jpegs"] = n
            e["jpeg_kb_mean"] = round(sum(len(r["content"]) for r in jpegs) / n / 1024, 1)
            e["jpeg_seconds"] = round(time.perf_counter() - started, 2)
            # NB: ResNet50 has no built-in preprocessing: the loop feeds raw 0..255 floats,
            # as the lab's loader would. Fine for throughput (random weights anyway).

        for kind, lab_dev, g in devices:
            with section(f"throughput_resnet50_{kind}") as e:
                n = sizes[f"resnet_{kind}"]
                throughput("resnet50", resnet_dir, jpegs[:n], lab_dev, g, 256 if kind == "gpu"
                           else 64, e)

        if want_gpu:
            with section("resnet50_grad_mode_probe") as e:
                # The lab's loader body calls net(x) without no_grad: under the torch backend
                # that records an autograd graph. Peak memory of one batch, both ways.
                import keras
                import numpy as np
                import torch

                with keras.device("gpu:0"):
                    net = keras.saving.load_model(resnet_dir / "model.keras", compile=False)
                x = np.random.default_rng(0).integers(
                    0, 256, (sizes["resnet_probe"], 224, 224, 3)).astype(np.float32)
                for label, ctx in (("no_grad", torch.no_grad), ("grad_enabled",
                                                                 contextlib.nullcontext)):
                    torch.cuda.synchronize()
                    base_mb = torch.cuda.memory_allocated() / 2**20
                    reset_peak()
                    with keras.device("gpu:0"), ctx():
                        y = net(x, training=False)
                        held = torch.cuda.memory_allocated() / 2**20 - base_mb
                        out = keras.ops.convert_to_numpy(y)
                    e[label] = {"batch": int(len(x)),
                                "peak_above_weights_mb": round(
                                    torch.cuda.max_memory_allocated() / 2**20 - base_mb, 1),
                                "held_while_output_alive_mb": round(held, 1),
                                "output_requires_grad": bool(y.requires_grad)}
                    del y, out
                    gc.collect()
                del net
                e["gpu_mem_after_free"] = free_models()
                log(json.dumps(e, indent=1))
    finally:
        restore_pyspark(saved)

    summary = {k: v.get("ok") for k, v in RESULTS.items()}
    RESULTS["summary"] = summary
    save()
    log("SUMMARY", json.dumps(summary))
    return 0 if all(summary.values()) else 1


def _compare_rows(out: list, ref: dict, stats: dict, rows: list) -> dict:
    """Compare by path: the loop emits an error row at once but a good row only when its
    batch flushes, so the output order depends on batch_size (recorded, not required)."""
    by_path = {r[0]: r for r in ref["rows"]}
    assert len(out) == len(by_path) == len(rows)
    ref_rows = [by_path[a[0]] for a in out]
    order_same = [a[0] for a in out] == [r["path"] for r in rows]
    moved = sum(1 for a, r in zip(out, rows, strict=True) if a[0] != r["path"])
    scored = [(a, b) for a, b in zip(out, ref_rows, strict=True) if b[3] is None]
    pred_eq = sum(1 for a, b in scored if a[0] == b[0] and a[1] == b[1])
    conf = [abs(a[2] - b[2]) for a, b in scored if a[2] is not None]
    errs = [(a, b) for a, b in zip(out, ref_rows, strict=True) if b[3] is not None]
    err_same_kind = sum(1 for a, b in errs if a[3] is not None
                        and a[3].split(":")[0] == b[3].split(":")[0])
    err_exact = sum(1 for a, b in errs if a[3] == b[3])
    return {"rows": len(out), "output_order_equals_input_order": order_same,
            "rows_not_at_input_position": moved,
            "scored_rows": len(scored), "predictions_equal": pred_eq,
            "max_confidence_diff": max(conf) if conf else None,
            "error_rows": len(errs), "error_rows_same_message_prefix": err_same_kind,
            "error_rows_identical_message": err_exact,
            "error_mismatches": [[a[0], a[3], b[3]] for a, b in errs if a[3] != b[3]][:5],
            "loader_calls": stats.get("loader_calls"),
            "weights_device": stats.get("weights_device")}


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--images", required=True, help="the lab's digits folder (<label>/*.png)")
    p.add_argument("--tmp", default="/tmp/gpucheck_prepare")
    c = sub.add_parser("check")
    c.add_argument("--device", choices=["gpu", "cpu"], required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--tmp", default="/tmp/gpucheck_check")
    c.add_argument("--small", action="store_true", help="tiny sizes (local smoke run)")
    args = parser.parse_args()
    return prepare(args) if args.cmd == "prepare" else check(args)


if __name__ == "__main__":
    sys.exit(main())
