"""What the inference benchmark measures: the styles, the sizes, the models and their data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lab_utils import config as lab_config
from lab_utils.common import saved_model
from lab_utils.common import tensorflow as tf_setup
from lab_utils.data import images
from lab_utils.errors import LabError
from lab_utils.training import cnn


class BenchError(LabError, RuntimeError):
    """A benchmark run could not measure what it was asked to (missing files, a failed
    reference process, a peer engine that lost rows); the message says which and why."""


STYLES = ("transfer_only", "row_pickled", "row_arrow", "pandas_series", "iterator",
          "predict_batch_udf", "map_in_pandas", "partition_predictor")
#: What ``make bench`` runs by default: :data:`STYLES` (notebook 02's set) and the Arrow UDF
#: (``arrow_udf``: :func:`lab_utils.inference.arrow_iterator_udf`, Spark 4.1), next to the
#: iterator pandas UDF it mirrors.
BENCH_STYLES = (*STYLES[:5], "arrow_udf", *STYLES[5:])
ROW_STYLES = {"row_pickled", "row_arrow"}
#: The single-process loops; the faster of the two is the baseline every ratio is taken against.
BASELINES = ("baseline_pipelined", "baseline_naive")
#: One single-threaded process (decode and TensorFlow on one thread): the unit of the all-cores
#: ideal, its throughput times the cores (``ideal_rows_per_s`` in the results).
SINGLE = "single_thread"
#: Peer engines (``--peers``), each run by :mod:`lab_utils.bench.peers`, and their styles.
PEERS = ("ray", "daft")
PEER_STYLES = {"ray": "ray_data", "daft": "daft"}
#: REST scoring through the lab's model server: ``rest`` as ``rest_udf`` chooses (image files as
#: ``{"b64": ...}``, the model declaring an image input), ``rest_pixels`` with pixel lists forced,
#: ``rest_in_flight`` as ``rest`` with :data:`REST_IN_FLIGHT` requests in flight per task.
REST_STYLES = ("rest", "rest_pixels", "rest_in_flight")
#: Opt-in styles, not in the default run (``--rest`` or ``--styles ...,rest``).
EXTRA_STYLES = REST_STYLES
#: Images per REST request (a 32x32 JPEG is ~1.4 KB as b64, ~13 KB as pixel lists).
REST_BATCH = 64
#: Requests in flight per task for ``rest_in_flight`` (``RestOptions.in_flight``): with 2 tasks,
#: 8 at the server, whose default admission runs 2 and queues 16.
REST_IN_FLIGHT = 4
FIELD_SIZES = (100, 500, 1000, 1500, 2000, 2500, 3000)

#: ``--switches``: Spark settings every asked style is also run with, next to its run without
#: them, in the same ``make bench``: ``(settings, fixed at start)``. A runtime setting is set on
#: the session around the style's run (the run with it comes right after the run without);
#: one fixed when an application starts (the pipelined transfer, a ``spark.python.*`` core
#: setting read by the executors) gets a second classic application of its own, run after the
#: first on the same cached files and references. Names verified in the PySpark 4.3 jars:
#: ``spark.python.udf.pipelined.*`` (spark-core), ``spark.sql.execution.arrow.*`` (SQLConf).
SWITCHES: dict[str, tuple[dict[str, str], bool]] = {
    # JVM->Python input written by its own thread while the task thread reads the output
    # (default off; its description names ML inference); queue depth: batches read ahead.
    "pipelined": ({"spark.python.udf.pipelined.enabled": "true",
                   "spark.python.udf.pipelined.queueDepth": "2"}, True),
    # Arrow IPC between the JVM and the Python workers compressed (default "none").
    "zstd": ({"spark.sql.execution.arrow.compression.codec": "zstd"}, False),
    "lz4": ({"spark.sql.execution.arrow.compression.codec": "lz4"}, False),
    # Arrow batches cut at 1 MiB as well as at maxRecordsPerBatch rows (whichever comes first):
    # ResNet-50's 224x224 JPEGs make ~0.1 MB rows, so its 1,024-row batches shrink to ~10 rows.
    "max_bytes": ({"spark.sql.execution.arrow.maxBytesPerBatch": str(1 << 20)}, False),
}


def switch_style(style: str, switch: str) -> str:
    """The result row's style name for ``style`` run with ``switch`` on.

    >>> switch_style("iterator", "zstd"), base_style("iterator+zstd"), base_style("iterator")
    ('iterator+zstd', 'iterator', 'iterator')
    """
    return f"{style}+{switch}"


def base_style(style: str) -> str:
    """The style a result row measured, without its switch."""
    return style.split("+", 1)[0]


def warmup_rows(cores: int, batch: int) -> int:
    """The rows of every engine's warm-up query, Spark's and the peers' alike: one full model
    batch per core (so each worker or instance has started, loaded the model and run the batch
    shape the timed run uses), at least 8.

    >>> warmup_rows(2, 256), warmup_rows(2, 16), warmup_rows(1, 2)
    (512, 32, 8)
    """
    return max(cores * batch, 8)


@dataclass(frozen=True)
class BenchModel:
    name: str
    spec: saved_model.ModelSpec
    make_predict_fn: tf_setup.MakePredictFn | None  # None: the factories' Keras default
    data_dir: Path
    baseline_kind: str  # "keras" or "resnet50"


# --------------------------------------------------------------------------- data and models


def prepare_models(
    cfg: lab_config.LabConfig, which: tuple[str, ...], max_n: int
) -> list[BenchModel]:
    """Build the data sets (enough files for ``max_n``) and the models, once."""
    from lab_utils.inference import resnet

    out = []
    if "cnn" in which:
        spec = cnn.ensure_model(cfg)
        data = cfg.share_dir / "data" / "bench-images"
        per_scan = max(1, -(-max_n // 1797))
        marker = data / ".dataset.json"
        if not marker.is_file() or json.loads(marker.read_text())["files"] < max_n:
            images.build_image_dataset(data, copies=per_scan, image_format="jpeg")
        out.append(BenchModel("cnn", spec, None, data, "keras"))
    if "resnet50" in which:
        model_dir = cfg.share_dir / "models" / "resnet50"
        data = cfg.share_dir / "data" / "bench-photos"
        if len(list(data.rglob("*.jpg"))) < max_n:
            resnet.build_photo_dataset(data, max_n)
        try:
            spec = saved_model.load_spec(model_dir)
        except saved_model.ModelError:
            model, imagenet = resnet.build_model(model_dir)
            resnet.save_resnet(model, model_dir, imagenet)
            spec = saved_model.load_spec(model_dir)
        out.append(BenchModel("resnet50", spec, resnet.predict_fn_from_path(spec.model_file),
                              data, "resnet50"))
    return out


def list_files(data_dir: Path, n: int) -> list[Path]:
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) < n:
        raise BenchError(f"{data_dir} has {len(files)} files, {n} requested: run `make bench` "
                         "(it writes them) or ask for fewer")
    return files[:n]
