"""The session benchmark's pure parts without Spark: the private lab's environment, the probes'
order and output, the executors count, the medians, and which suite ``python -m
lab_utils.bench`` hands to whom."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lab_utils import config as lab_config
from lab_utils.bench import __main__ as bench_main
from lab_utils.bench import session_probe, session_suite
from lab_utils.bench.cases import BenchError
from tests.utils.doctests import run_examples


@pytest.mark.parametrize("module", [session_suite, bench_main], ids=lambda m: m.__name__)
def test_examples_in_the_docs_run(module, tmp_path):
    assert run_examples(module, tmp_path) >= 1


def test_the_private_lab_keeps_nothing_of_the_developers_lab(tmp_path):
    base = {"PATH": "/bin", "HOME": "/root", "LAB_WORKERS": "5", "LAB_SPARK_API": "connect",
            "SPARK_MASTER_URL": "spark://elsewhere:7077", "SPARK_AUTH_SECRET": "theirs",
            "SPARK_CONNECT_AUTHENTICATE_TOKEN": "theirs", "JUPYTER_TOKEN": "theirs",
            "SPARK_REMOTE": "sc://elsewhere", "LAB_SHARE_DIR": "/their/share"}
    env = session_suite.private_lab_env(tmp_path, idle_timeout=7, base=base)
    cfg = lab_config.load(env)
    assert env["PATH"] == "/bin" and env["HOME"] == "/root"
    assert "SPARK_MASTER_URL" not in env and "SPARK_REMOTE" not in env
    assert cfg.master_url is None and cfg.spark_api == "classic"
    assert cfg.workers == 2 and cfg.connect_idle_timeout == 7
    assert cfg.state_dir == tmp_path / "state" and cfg.share_dir == tmp_path / "share_storages"
    secrets = [cfg.auth_secret, cfg.jupyter_token, cfg.connect_token]
    assert "theirs" not in secrets and len(set(secrets)) == 3 and all(len(s) >= 24 for s in secrets)
    ports = [cfg.master_port, cfg.master_ui_port, cfg.history_port, cfg.jupyter_port,
             cfg.model_server_port, cfg.connect_port, cfg.connect_ui_port, cfg.worker_ui_port]
    assert len(set(ports)) == len(ports) and 15002 not in ports and 7077 not in ports
    # Two fresh labs never share a secret.
    other = session_suite.private_lab_env(tmp_path, idle_timeout=7, base=base)
    assert other["SPARK_AUTH_SECRET"] != env["SPARK_AUTH_SECRET"]


def test_a_private_lab_needs_distinct_ports(tmp_path):
    with pytest.raises(BenchError, match="distinct ports"):
        session_suite.private_lab_env(tmp_path, idle_timeout=10, base={}, ports=[1] * 8)


def test_each_probe_gets_a_kernels_environment_in_its_mode(tmp_path):
    cfg = lab_config.load(session_suite.private_lab_env(tmp_path, idle_timeout=10, base={}))
    classic = session_suite.probe_env(cfg, session_suite.CLASSIC)
    warm = session_suite.probe_env(cfg, session_suite.WARM)
    cold = session_suite.probe_env(cfg, session_suite.COLD)
    assert classic["LAB_SPARK_API"] == "classic"
    assert warm["LAB_SPARK_API"] == cold["LAB_SPARK_API"] == "connect"
    for env in (classic, warm, cold):
        assert env["SPARK_MASTER_URL"] == f"spark://127.0.0.1:{cfg.master_port}"
        assert env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] == cfg.connect_token
        assert env["LAB_CONNECT_PORT"] == str(cfg.connect_port)
        assert env["LAB_SPARK_REMOTE"] == ""  # the lab's own server, not one from a .env
        loaded = lab_config.load(env)
        assert loaded.connect_url == f"sc://localhost:{cfg.connect_port}"


def test_rounds_alternate_the_first_probe_and_end_cold():
    plan = session_suite.round_plan(4)
    assert [r[0] for r in plan] == ["classic", "connect_warm"] * 2
    assert all(r[-1] == "connect_cold" and sorted(r) == sorted(session_suite.PROBES)
               for r in plan)


def test_the_probe_line_is_found_among_other_output():
    line = session_probe.MARKER + json.dumps({"api": "connect", "ready_s": 2.1})
    assert session_suite.parse_probe(f"warning: x\n{line}\nbye\n")["ready_s"] == 2.1
    with pytest.raises(BenchError, match="no result line"):
        session_suite.parse_probe("Traceback ...\n")


def test_the_driver_is_not_an_executor():
    assert session_suite.executor_count([{"id": "driver"}]) == 0
    assert session_suite.executor_count([{"id": "driver"}, {"id": "1"}]) == 1


def _runs() -> pd.DataFrame:
    rows = []
    for number, (classic, warm, cold) in enumerate([(18, 2.0, 6.0), (14, 2.4, 5.0),
                                                    (16, 1.8, 7.0)]):
        for probe, ready in (("classic", classic), ("connect_warm", warm),
                             ("connect_cold", cold)):
            rows.append({"probe": probe, "round": number, "ready_s": ready, "import_s": 0.5,
                         "session_s": ready / 2, "query_s": ready / 2 - 0.5,
                         "process_s": ready + 1, "executors_before": 0 if probe != "connect_warm"
                         else 2})
    return pd.DataFrame(rows)


def test_the_summary_is_the_median_per_probe_and_the_ratio_to_classic():
    table = session_suite.summarize(_runs()).set_index("probe")
    assert list(table.index) == ["classic", "connect_warm", "connect_cold"]
    assert table.loc["classic", "ready_s"] == 16 and table.loc["connect_warm", "ready_s"] == 2.0
    assert (table.loc["connect_cold", "ready_s_min"], table.loc["connect_cold", "ready_s_max"]) \
        == (5.0, 7.0)
    assert table.loc["connect_warm", "classic_over"] == pytest.approx(8.0)
    assert table.loc["classic", "classic_over"] == 1.0
    assert table.loc["connect_warm", "executors_before"] == 2
    assert (table["runs"] == 3).all()
    text = session_suite.report(table.reset_index())
    assert "connect_warm: ready in 2.00 s (median of 3), 8.0x faster than a classic session" in text


def test_suites_the_session_suite_does_not_run_go_to_the_others(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_main, "other_suites", lambda argv: calls.append(argv) or 0)
    ran = []
    monkeypatch.setattr(session_suite, "run", lambda **kw: ran.append(kw) or pd.DataFrame(
        {"probe": [], "runs": [], "ready_s": [], "classic_over": []}))
    assert bench_main.main(["--suites", "training", "--groups", "10"]) == 0
    assert calls == [["--groups", "10", "--suites", "training"]] and not ran
    calls.clear()
    assert bench_main.main(["--suites", "session", "--session-rounds", "2",
                            "--session-idle-timeout", "15"]) == 0
    assert calls == [] and ran == [{"rounds": 2, "idle_timeout": 15}]


def test_the_probe_module_starts_its_clock_before_its_imports():
    source = Path(session_probe.__file__).read_text()
    before, _, after = source.partition("\n_T0 = time.perf_counter()\n")
    assert [line for line in before.splitlines() if line.startswith(("import", "from"))] == [
        "from __future__ import annotations", "import time"]
    # lab_utils (and through it pyspark) is imported inside main(), on the clock.
    assert "from lab_utils.session import get_spark" in after.split("def main")[1]


def test_an_unknown_suite_is_refused_before_any_runs(monkeypatch, capsys):
    monkeypatch.setattr(bench_main, "other_suites", lambda argv: pytest.fail("ran"))
    monkeypatch.setattr(session_suite, "run", lambda **kw: pytest.fail("ran"))
    with pytest.raises(SystemExit):
        bench_main.main(["--suites", "session,sesion"])
    assert "unknown suite(s) ['sesion']: use server, session, inference, training" in (
        capsys.readouterr().err)
