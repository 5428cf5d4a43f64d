"""What the Spark styles are measured against: one plain Python process on the same cores and
files (:mod:`lab_utils.bench.baseline`), the single-threaded loop behind the all-cores ideal,
and the peer engines Ray Data and Daft (:mod:`lab_utils.bench.peers`), each run in a process
of its own so that neither shares an interpreter with the Spark driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab_utils.bench.cases import PEER_STYLES, BenchError, BenchModel


def run_baselines(model: BenchModel, files: list[Path], sizes: list[int], threads: int,
                  batch: int, modes: tuple[str, ...] = ("parallel", "naive"),
                  ) -> dict[int, dict[str, dict]]:
    """One plain Python process, all cores, same decode and model: the physical limit.

    Runs :mod:`lab_utils.bench.baseline` in a process of its own, which times its ``parallel``
    loop (the best one process does on these cores, the limit the Spark styles are measured
    against) and its ``naive`` loop (the baseline most published comparisons use) on the first
    N files for every size; the model is loaded once and its load time reported with each size.
    Returns ``{n: {"parallel": {...}, "naive": {...}}}``.
    """
    args = {"kind": model.baseline_kind, "model_file": str(model.spec.model_file),
            "files": [str(f) for f in files[:max(sizes)]], "sizes": list(sizes),
            "size": list(model.spec.image_size), "threads": threads, "batch": batch,
            "modes": list(modes)}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "lab_utils.bench.baseline"],
                          input=json.dumps(args),
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise BenchError(f"baseline failed:\n{done.stderr[-2000:]}")
    results: dict[int, dict[str, dict]] = {}
    for line in done.stdout.splitlines():
        if line.startswith('{"n"'):
            record = json.loads(line)
            results.setdefault(record["n"], {})[record["mode"]] = record
    return results


def run_peers(engine: str, model: BenchModel, files: list[Path], sizes: list[int], cores: int,
              batch: int, marks: Path) -> dict[int, dict]:
    """Ray Data or Daft (:mod:`lab_utils.bench.peers`) in a process of its own, limited to
    ``cores``, on the first N files for every size; ``{n: record}``."""
    args = {"engine": engine, "kind": model.baseline_kind,
            "model_file": str(model.spec.model_file),
            "class_names": list(model.spec.class_names), "size": list(model.spec.image_size),
            "files": [str(f) for f in files[:max(sizes)]], "sizes": list(sizes),
            "cores": cores, "batch": batch, "marks": str(marks)}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_DEDUP_LOGS": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "lab_utils.bench.peers"],
                          input=json.dumps(args),
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise BenchError(f"{engine} failed:\n{done.stderr[-3000:]}")
    return {r["n"]: r for r in (json.loads(line) for line in done.stdout.splitlines()
                                 if line.startswith('{"engine"'))}


def check_peers(engines: tuple[str, ...]) -> None:
    """Fail before a session starts when a peer engine is not installed."""
    import importlib.util

    missing = [e for e in engines if importlib.util.find_spec(e) is None]
    if missing:
        raise SystemExit(f"peer engine(s) {missing} not installed: `make bench-peers` (or "
                         "`uv sync --frozen --group bench-peers`) installs them")


def run_baseline(model: BenchModel, files: list[Path], threads: int, batch: int) -> dict:
    """The baseline for all of ``files``: the faster of the two single-process loops."""
    modes = run_baselines(model, files, [len(files)], threads, batch)[len(files)]
    return min(modes.values(), key=lambda m: m["seconds"])


def reference_runs(model: BenchModel, files: list[Path], sizes: list[int], cores: int,
                    batch: int, peers: tuple[str, ...], out_dir: Path,
                    progress: Callable[[str], None]) -> dict[str, Any]:
    """What Spark is compared with, at every N: one process on every core (pipelined and
    naive), one single-threaded process (the all-cores ideal's unit) and the peer engines."""
    progress(f"{model.name} baseline (1 process, {cores} TF threads), N={sizes}")
    runs: dict[str, Any] = {"baselines": run_baselines(model, files, sizes, cores, batch)}
    progress(f"{model.name} single-threaded process (the all-cores ideal's unit), N={sizes}")
    runs["single"] = run_baselines(model, files, sizes, 1, batch, modes=("naive",))
    runs["peers"] = {}
    for engine in peers:
        progress(f"{model.name} {PEER_STYLES[engine]} ({cores} cores), N={sizes}")
        runs["peers"][engine] = run_peers(engine, model, files, sizes, cores, batch,
                                          out_dir / "peer-marks" / model.name / engine)
    return runs


def reference_records(base_record: dict[str, Any], runs: dict[str, Any], n: int,
                       cores: int) -> list[dict[str, Any]]:
    """The result rows of :func:`reference_runs` at ``n``."""
    records = []
    one_process = {"python_workers": 1, "tf_threads_per_task": cores}
    for style, mode in (("baseline_pipelined", "parallel"), ("baseline_naive", "naive")):
        base = runs["baselines"][n][mode]
        records.append({**base_record, "style": style, "rows": base["rows"],
                        "warmup_s": base["load_s"], "seconds": base["seconds"],
                        "worker_peak_rss_mb": base["peak_rss_mb"], **one_process})
    one = runs["single"][n]["naive"]
    records.append({**base_record, "style": "single_thread", "rows": one["rows"],
                    "warmup_s": one["load_s"], "seconds": one["seconds"],
                    "worker_peak_rss_mb": one["peak_rss_mb"], **one_process,
                    "tf_threads_per_task": 1})
    for engine, by_n in runs["peers"].items():
        peer = by_n[n]
        records.append({**base_record, "style": PEER_STYLES[engine],
                        **{k: v for k, v in peer.items() if k not in ("engine", "n", "settings")},
                        "tf_threads_per_task": 1, "peer_settings": json.dumps(peer["settings"])})
    return records
