"""Fixtures for cluster tests that need a whole cluster of their own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lab_utils import config as lab_config
from lab_utils.ops import lab
from tests.conftest import lab_env


class Phases:
    """Seconds spent in each named phase of a long test, printed at its end (``-s`` or on
    failure), so a slow run says where its time went."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        self.seconds[name] = round(time.monotonic() - self.began - sum(self.seconds.values()), 1)

    def __str__(self) -> str:
        return f"phases (s): {self.seconds}"


@pytest.fixture(scope="session")
def private_lab(tmp_path_factory) -> Iterator[lab_config.LabConfig]:
    """A second native lab (2 workers x 2 cores, no JupyterLab) that tests may fill or break.

    The session's lab cannot serve these tests: its ``pytest`` application holds 2 of its 4
    cores all session, and a worker killed there would disturb every later test. One private
    lab is shared by the tests that need one (starting a lab is the slow part); each leaves it
    with both workers ALIVE and no application running, or fails saying why.
    """
    cfg = lab_config.load(lab_env(tmp_path_factory.mktemp("private-lab"), workers=2))
    try:
        lab.start(cfg, jupyter=False, out=lambda *_: None)
        yield cfg
    finally:
        lab.stop(cfg, out=lambda *_: None)


def assert_lab_ready(cfg: lab_config.LabConfig) -> None:
    """Both workers ALIVE, 4 cores free, no application running: what each test starts from."""
    state = lab.master_state(cfg, timeout=30)
    assert (state["aliveworkers"], state["cores"], state["coresused"]) == (2, 4, 0), (
        "the private lab is not idle with two workers (an earlier test left it broken)",
        {k: state[k] for k in ("aliveworkers", "cores", "coresused", "activeapps")})
