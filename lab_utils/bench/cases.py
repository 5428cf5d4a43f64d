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
#: ``{"b64": ...}``, the model declaring an image input), ``rest_pixels`` with pixel lists forced.
REST_STYLES = ("rest", "rest_pixels")
#: Opt-in styles, not in the default run (``--rest`` or ``--styles ...,rest``).
EXTRA_STYLES = REST_STYLES
#: Images per REST request (a 32x32 JPEG is ~1.4 KB as b64, ~13 KB as pixel lists).
REST_BATCH = 64
FIELD_SIZES = (100, 500, 1000, 1500, 2000, 2500, 3000)


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
