"""The model server under load: ``python -m lab_utils.bench.server_load`` (``make bench
BENCH_ARGS="--suites server"``).

A model server is started in its own process (:func:`lab_utils.serving.process.launch`) serving
the lab's digits CNN; ``--clients`` threads then send it predicts of the **largest size it
allows** (:func:`~lab_utils.serving.inputs.max_batch` images of random pixels, as compact JSON,
some 11 MB each) for ``--seconds``, back to back, each honouring ``Retry-After`` on a 429 as the
lab's REST client does, while one more thread asks ``/healthz`` every ``--probe-every`` seconds.
Reported: predicts answered per second, their latency (p50, p99), the 429s, the other failures,
and ``/healthz``'s latency before the load and under it (p50, max, and how many probes took
longer than the lab's 3 s health-probe timeout).

The bodies are encoded once, before the clock starts, so the clients cost the machine only
their sockets; they share its cores with the server all the same, as a Spark job's tasks would.
Printed, and written to ``share_storages/output/bench/server_load-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The lab's health probe gives up after this many seconds (``lab_utils.ops`` health checks).
PROBE_TIMEOUT_S = 3.0


@dataclass
class Tally:
    """What the clients and the prober saw, appended from their threads."""

    latencies: list[float] = field(default_factory=list)  # answered predicts (200)
    refused: int = 0  # 429
    failed: dict[str, int] = field(default_factory=dict)  # other statuses and errors
    health: list[float] = field(default_factory=list)
    health_failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failed[what] = self.failed.get(what, 0) + 1


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by the nearest-rank method; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def largest_body(spec: Any, seed: int = 0) -> tuple[bytes, int]:
    """The largest predict body ``spec``'s model takes: ``max_batch`` images of random pixels
    as compact JSON (what a client's ``json.dumps`` sends); and its image count."""
    import numpy as np

    from lab_utils.serving.inputs import max_batch

    n = max_batch(spec)
    h, w = spec.image_size
    pixels = np.random.default_rng(seed).integers(0, 256, (n, h, w, spec.channels))
    return json.dumps({"instances": pixels.tolist()}, separators=(",", ":")).encode(), n


def client(url: str, body: bytes, until: float, tally: Tally) -> None:
    """POST ``body`` back to back until ``until``; on a 429, wait what ``Retry-After`` says."""
    import requests

    with requests.Session() as session:
        while time.monotonic() < until:
            began = time.monotonic()
            try:
                answer = session.post(url, data=body, timeout=120,
                                      headers={"Content-Type": "application/json"})
            except requests.RequestException as exc:
                tally.fail(type(exc).__name__)
                continue
            took = time.monotonic() - began
            if answer.status_code == 200:
                with tally.lock:
                    tally.latencies.append(took)
            elif answer.status_code == 429:
                with tally.lock:
                    tally.refused += 1
                wait = float(answer.headers.get("Retry-After", "1"))
                time.sleep(max(0.0, min(wait, until - time.monotonic())))
            else:
                tally.fail(f"HTTP {answer.status_code}")


def probe(url: str, every: float, until: float, tally: Tally) -> None:
    """GET ``/healthz`` every ``every`` seconds until ``until``, recording each latency."""
    import requests

    while time.monotonic() < until:
        began = time.monotonic()
        try:
            ok = requests.get(f"{url}/healthz", timeout=60).json().get("status") == "ok"
        except (requests.RequestException, ValueError):
            ok = False
        took = time.monotonic() - began
        with tally.lock:
            if ok:
                tally.health.append(took)
            else:
                tally.health_failed += 1
        time.sleep(max(0.0, every - took))


def idle_health(url: str, times: int = 20) -> list[float]:
    """``/healthz`` latencies with nothing else in flight."""
    import requests

    out = []
    for _ in range(times):
        began = time.monotonic()
        requests.get(f"{url}/healthz", timeout=10).raise_for_status()
        out.append(time.monotonic() - began)
    return out


def machine() -> dict[str, Any]:
    """The CPU, the cores and the load average when measured (another job competing shows)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "platform": platform.platform(), "python": platform.python_version()}


def summary(tally: Tally, seconds: float, idle: list[float]) -> dict[str, Any]:
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {
        "answered": len(tally.latencies),
        "requests_per_s": round(len(tally.latencies) / seconds, 2),
        "latency_ms": {"p50": ms(percentile(tally.latencies, 50)),
                       "p99": ms(percentile(tally.latencies, 99)),
                       "max": ms(max(tally.latencies, default=None))},
        "refused_429": tally.refused, "failed": tally.failed,
        "healthz_idle_ms": {"p50": ms(percentile(idle, 50)), "max": ms(max(idle, default=None))},
        "healthz_under_load_ms": {"p50": ms(percentile(tally.health, 50)),
                                  "p99": ms(percentile(tally.health, 99)),
                                  "max": ms(max(tally.health, default=None)),
                                  "probes": len(tally.health),
                                  "over_probe_timeout": sum(t > PROBE_TIMEOUT_S
                                                            for t in tally.health),
                                  "failed": tally.health_failed},
    }


def run(*, clients: int, seconds: float, probe_every: float, concurrency: int | None,
        queue: int | None, parse_in: str | None = None,
        out_dir: Path | None = None) -> dict[str, Any]:
    """Start a server, load it, stop it; the figures (also written as JSON under ``out_dir``)."""
    from lab_utils import config as lab_config
    from lab_utils.serving.process import launch
    from lab_utils.training import cnn

    cfg = lab_config.load()
    spec = cnn.ensure_model(cfg)
    body, images = largest_body(spec)
    out_dir = out_dir or cfg.share_dir / "output" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        (models / spec.path.name).symlink_to(spec.path.resolve())  # this model only
        with launch(models, concurrency=concurrency, queue=queue, parse_in=parse_in,
                    log_file=out_dir / f"server_load-{stamp}.log") as server:
            url = f"{server.url}/v1/models/{spec.path.name}:predict"
            import requests

            requests.post(url, data=body, timeout=120).raise_for_status()  # load the model
            idle = idle_health(server.url)
            admission = server.stats().get("admission")  # None: a server without the bound
            tally = Tally()
            before = machine()
            until = time.monotonic() + seconds
            threads = [threading.Thread(target=client, args=(url, body, until, tally))
                       for _ in range(clients)]
            threads.append(threading.Thread(target=probe,
                                            args=(server.url, probe_every, until, tally)))
            began = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.monotonic() - began
            stats = server.stats()
    result = {
        "what": "model server under load: largest allowed predicts, back to back",
        "model": spec.path.name, "images_per_request": images, "body_bytes": len(body),
        "clients": clients, "seconds": round(took, 1), "admission": admission,
        "parse_in": parse_in or "processes",
        "machine": before, "load_average_after": os.getloadavg(),
        **summary(tally, took, idle),
        "server_counters": {k: stats.get(k) for k in ("predict_requests", "busy_refusals",
                                                      "bad_requests")},
    }
    path = out_dir / f"server_load-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["written_to"] = str(path)
    return result


def report(result: dict[str, Any]) -> str:
    lat, health = result["latency_ms"], result["healthz_under_load_ms"]
    idle = result["healthz_idle_ms"]
    m = result["machine"]
    return "\n".join([
        f"model server under load: {result['clients']} clients x {result['seconds']} s, "
        f"{result['images_per_request']} images ({result['body_bytes'] / 1e6:.1f} MB) per "
        f"predict, admission {result['admission']}, parsed in {result['parse_in']}",
        f"  machine: {m['cpu']}, {m['cpu_count']} CPUs, load average "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])} at start",
        f"  predicts: {result['answered']} answered, {result['requests_per_s']} requests/s, "
        f"latency p50 {lat['p50']} ms, p99 {lat['p99']} ms; 429: {result['refused_429']}; "
        f"other failures: {result['failed'] or 'none'}",
        f"  /healthz idle: p50 {idle['p50']} ms, max {idle['max']} ms; under load: p50 "
        f"{health['p50']} ms, p99 {health['p99']} ms, max {health['max']} ms over "
        f"{health['probes']} probes, {health['over_probe_timeout']} over the "
        f"{PROBE_TIMEOUT_S:.0f} s probe timeout, {health['failed']} failed",
        f"  written to {result['written_to']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab_utils.bench.server_load",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration (30)")
    parser.add_argument("--probe-every", type=float, default=0.25,
                        help="seconds between /healthz probes (0.25)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="the server's --concurrency (default: its own, the cores)")
    parser.add_argument("--queue", type=int, default=None,
                        help="the server's --queue (default: its own, 16)")
    parser.add_argument("--parse-in", choices=("processes", "threads"), default=None,
                        help="the server's --parse-in (default: its own, processes)")
    args = parser.parse_args(argv)
    print(report(run(clients=args.clients, seconds=args.seconds, probe_every=args.probe_every,
                     concurrency=args.concurrency, queue=args.queue,
                     parse_in=args.parse_in)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
