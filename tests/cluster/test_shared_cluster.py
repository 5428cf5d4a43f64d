"""Three applications started at once on a two-worker lab: who runs, who waits.

What the settings predict (the lab's defaults on this 2-core machine):

* the cluster offers ``workers x LAB_WORKER_CORES`` = 2 x 2 = **4 cores**;
* each application may hold at most ``spark.cores.max`` = ``LAB_APP_CORES_MAX`` = **2 cores**
  (``spark.deploy.defaultCores`` gives the same cap to applications that do not ask);
* the master hands out cores first come, first served, spread over the workers (one 1-core
  executor on each), and never takes cores back from a running application;
* so **two applications run at once**, 2 cores each, and the **third is WAITING** with no
  executor (its job's tasks queue in its driver) until one of the first two stops; then it
  gets that application's 2 cores and runs. Memory does not bind first: each worker offers
  2 GiB here (4 GiB by default) and each executor takes 1 GiB.

The test asserts exactly that, from the master's JSON (sampled while they run) and the
applications' own task timestamps: all three finish with correct results, none ever holds
more than the cap, at most two hold cores at a time and two did overlap, the third waited in
WAITING with no cores and started its tasks only after another application had finished, and
the master and the history server list all three as finished.

It uses the private lab (``private_lab``), not the session's: the session's own ``pytest``
application keeps its 2 cores for the whole run, which would leave room for only one of the
three at a time. (That is the lab's behaviour too: a notebook that keeps its session open holds
its cores.)
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap

from lab_utils.common import net, process
from lab_utils.ops import services
from tests.utils.phases import Phases, assert_lab_ready

APPS = ("shared-a", "shared-b", "shared-c")
TASKS = 4  # twice the cap: every application needs all its cores, twice over
TASK_SECONDS = 1.5

APP = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path

    from lab_utils.common.process import wait_until
    from lab_utils.session import get_spark

    ctl, name, tasks, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    GO_TIMEOUT_S = 600
    spark = get_spark(name, quiet=True)
    sc = spark.sparkContext
    # A first small job runs once this application has executors: then it is ready. The one
    # the master keeps WAITING stays here until another application stops.
    assert sc.parallelize(range(2), 2).count() == 2
    (ctl / f"{name}.ready").write_text(sc.applicationId)
    # The test says go within seconds of the second one being ready; without it (the test
    # failed or was stopped) this application gives its cores back instead of holding them.
    if not wait_until((ctl / "go").exists, GO_TIMEOUT_S, 0.1):
        spark.stop()
        sys.exit(f"no go after {GO_TIMEOUT_S} s: the test that started {name} has ended")

    def work(i):
        began = time.time()
        time.sleep(seconds)
        return i * i, began, time.time()

    job_start = time.time()
    results = sc.parallelize(range(tasks), tasks).map(work).collect()
    job_end = time.time()
    report = {"app": sc.applicationId, "cap": int(sc.getConf().get("spark.cores.max")),
              "sum": sum(r[0] for r in results), "job_start": job_start, "job_end": job_end,
              "first_task": min(r[1] for r in results), "last_task": max(r[2] for r in results)}
    spark.stop()
    print(json.dumps(report), flush=True)
""")


def master(cfg) -> dict:
    return services.master_state(cfg, timeout=30)  # a busy master answers slowly, not never


def test_three_apps_two_run_one_waits(tmp_path, private_lab):
    cfg = private_lab
    assert_lab_ready(cfg)
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    procs: dict[str, subprocess.Popen] = {}
    phase = Phases()

    try:
        state = master(cfg)
        cap = cfg.app_cores_max
        at_once = state["cores"] // cap
        assert (state["cores"], cap, at_once) == (4, 2, 2), "the prediction assumes 2 x 2 cores"

        env = services.service_env(cfg, "jupyter")
        for name in APPS:  # all three at once
            with open(tmp_path / f"{name}.out", "wb") as out, \
                    open(tmp_path / f"{name}.err", "wb") as err:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-c", APP, str(ctl), name, str(TASKS), str(TASK_SECONDS)],
                    env=env, cwd=tmp_path, stdout=out, stderr=err)

        def ours(apps: list[dict]) -> dict[str, dict]:
            return {a["name"]: a for a in apps if a["name"] in APPS}

        def two_ready() -> bool:
            # All three registered with the master, and two have run a job on their executors.
            return (len(ours(master(cfg)["activeapps"])) == 3
                    and sum((ctl / f"{n}.ready").is_file() for n in APPS) == at_once)

        assert process.wait_until(two_ready, 300, 0.2), (
            sorted(p.name for p in ctl.iterdir()), {n: p.poll() for n, p in procs.items()})
        before = ours(master(cfg)["activeapps"])
        phase("three registered, two ready")
        waiting = [n for n, a in before.items() if a["state"] == "WAITING"]
        assert len(waiting) == 1 and before[waiting[0]]["cores"] == 0, before
        running = [n for n in APPS if n not in waiting]
        assert all(before[n]["state"] == "RUNNING" and before[n]["cores"] == cap
                   for n in running), before

        # Go: sample the master while the three jobs run.
        (ctl / "go").touch()
        samples = []

        def all_exited() -> bool:
            if all(p.poll() is not None for p in procs.values()):
                return True
            with contextlib.suppress(OSError):  # a busy master answers the next poll
                samples.append(ours(master(cfg)["activeapps"]))
            return False

        # Each job takes a few seconds, the third one's after another's: 300 s means a hang.
        assert process.wait_until(all_exited, 300, 0.3), (
            "still running after 300 s", {n: p.poll() for n, p in procs.items()})
        for name, p in procs.items():
            assert p.wait() == 0, (name, (tmp_path / f"{name}.err").read_text()[-3000:])
        reports = {name: json.loads((tmp_path / f"{name}.out").read_text().splitlines()[-1])
                   for name in APPS}
        phase("three jobs")

        # Correct results, each application capped at spark.cores.max.
        assert {r["sum"] for r in reports.values()} == {sum(i * i for i in range(TASKS))}
        assert {r["cap"] for r in reports.values()} == {cap}
        held = {name: max([s[name]["cores"] for s in samples if name in s] or [0])
                for name in APPS}
        assert held == {name: cap for name in APPS}, held  # all its cores, never more
        # The master's JSON reads its live application objects after it answered: an
        # application removed meanwhile is still listed, its cores never taken back from the
        # object, but its state is FINISHED by the time the next one is granted cores (seen
        # once in CI: three apps at 2 cores each in one sample). Count the live ones.
        live = [[a for a in s.values() if a["state"] in ("RUNNING", "WAITING")] for s in samples]
        assert max(sum(a["cores"] for a in apps) for apps in live) <= state["cores"], samples
        assert max(sum(a["cores"] > 0 for a in apps) for apps in live) == at_once, samples

        # The two first ones overlapped; the third waited for one of them to finish.
        first, second = (reports[n] for n in running)
        assert max(first["first_task"], second["first_task"]) < min(
            first["last_task"], second["last_task"]), reports
        late = reports[waiting[0]]
        assert late["first_task"] >= min(first["job_end"], second["job_end"]), reports

        # The master and the history server list all three as finished.
        completed = {a["name"]: a["state"] for a in master(cfg)["completedapps"]}
        assert {n: completed.get(n) for n in APPS} == dict.fromkeys(APPS, "FINISHED")
        history = f"http://127.0.0.1:{cfg.history_port}/api/v1/applications"
        ids = {r["app"] for r in reports.values()}
        assert process.wait_until(lambda: ids <= {
            a["id"] for a in net.http_json(history, timeout=30)
            if a["attempts"] and a["attempts"][0]["completed"]}, 120), ids
        phase("history lists them")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        print(phase)
