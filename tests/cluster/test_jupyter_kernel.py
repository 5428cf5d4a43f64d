"""A notebook kernel started *by the lab's JupyterLab server*, driven over its websocket the way
the browser drives it: it must reach the 2-worker cluster and stream sparkmonitor's job events."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest
import websocket

#: Seconds for the kernel to start a Spark session on the cluster and run CODE.
REPLY_TIMEOUT_S = 600
CODE = """
from lab_utils.session import get_spark
from lab_utils.ops import cluster
spark = get_spark("through-jupyterlab")
print("MASTER", spark.sparkContext.master)
print("WORKERS", cluster.master_json()["aliveworkers"])
print("SUM", spark.range(100_000).repartition(4).selectExpr("sum(id)").first()[0])
print("LISTENER", spark.sparkContext.getConf().get("spark.extraListeners", "none"))
spark.stop()
"""


def _message(msg_type: str, content: dict, channel: str, session: str) -> dict:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "test",
                   "session": session, "date": datetime.now(UTC).isoformat(), "version": "5.3"},
        "parent_header": {}, "metadata": {}, "content": content, "channel": channel,
    }


@pytest.fixture()
def kernel(lab_cluster):
    base = f"127.0.0.1:{lab_cluster.cfg.jupyter_port}"
    auth = {"Authorization": f"token {lab_cluster.cfg.jupyter_token}",
            "Content-Type": "application/json"}
    body = json.dumps({"path": "test.ipynb", "type": "notebook", "name": "test.ipynb",
                       "kernel": {"name": "python3"}}).encode()
    request = urllib.request.Request(f"http://{base}/api/sessions", data=body, headers=auth)
    with urllib.request.urlopen(request, timeout=60) as response:
        session = json.loads(response.read())
    kernel_id = session["kernel"]["id"]
    ws = websocket.create_connection(
        f"ws://{base}/api/kernels/{kernel_id}/channels", timeout=300,
        header=[f"Authorization: token {lab_cluster.cfg.jupyter_token}"])
    yield ws
    ws.close()
    delete = urllib.request.Request(f"http://{base}/api/sessions/{session['id']}",
                                    headers=auth, method="DELETE")
    urllib.request.urlopen(delete, timeout=60).close()


def test_kernel_from_jupyterlab_runs_on_the_cluster_with_sparkmonitor(kernel, lab_cluster):
    session = uuid.uuid4().hex
    # What sparkmonitor's frontend does when a notebook opens: open its comm to the kernel.
    kernel.send(json.dumps(_message("comm_open", {"comm_id": uuid.uuid4().hex,
                                                  "target_name": "SparkMonitor", "data": {}},
                                    "shell", session)))
    request = _message("execute_request", {"code": CODE, "silent": False, "store_history": False,
                                           "user_expressions": {}, "allow_stdin": False,
                                           "stop_on_error": True}, "shell", session)
    kernel.send(json.dumps(request))
    text, monitor_events, reply = [], [], None
    deadline = time.monotonic() + REPLY_TIMEOUT_S  # each recv() waits 300 s at most (fixture)
    while reply is None:
        assert time.monotonic() < deadline, (
            f"no execute_reply after {REPLY_TIMEOUT_S} s", "".join(text)[-3000:])
        msg = json.loads(kernel.recv())
        kind = msg["header"]["msg_type"]
        if kind == "comm_msg" and msg["content"]["data"].get("msgtype") == "fromscala":
            monitor_events.append(json.loads(msg["content"]["data"]["msg"]).get("msgtype"))
        elif msg["parent_header"].get("msg_id") != request["header"]["msg_id"]:
            continue
        elif kind == "stream":
            text.append(msg["content"]["text"])
        elif kind == "error":
            text.append("\n".join(msg["content"]["traceback"]))
        elif kind == "execute_reply":
            reply = msg["content"]
    output = "".join(text)
    assert reply["status"] == "ok", output
    lines = dict(line.split(" ", 1) for line in output.splitlines()
                 if line.split(" ", 1)[0] in {"MASTER", "WORKERS", "SUM", "LISTENER"})
    assert lines["MASTER"] == lab_cluster.cfg.lab_master_url
    assert lines["WORKERS"] == "2"
    assert lines["SUM"] == str(sum(range(100_000)))
    assert lines["LISTENER"] == "sparkmonitor.listener.JupyterSparkMonitorListener"
    # The listener reported the job live: application, job and stage events reached the comm.
    assert {"sparkApplicationStart", "sparkJobStart", "sparkJobEnd"} <= set(monitor_events), \
        sorted(set(monitor_events))
