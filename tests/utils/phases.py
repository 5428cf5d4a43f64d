"""Helpers for the long cluster tests: where a slow run spent its time, and the state each test
of the shared private lab starts from."""

from __future__ import annotations

import time

from lab_utils import config as lab_config
from lab_utils.ops import services


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


def assert_lab_ready(cfg: lab_config.LabConfig) -> None:
    """Both workers ALIVE, 4 cores free, no application running: what each test starts from."""
    state = services.master_state(cfg, timeout=30)
    assert (state["aliveworkers"], state["cores"], state["coresused"]) == (2, 4, 0), (
        "the private lab is not idle with two workers (an earlier test left it broken)",
        {k: state[k] for k in ("aliveworkers", "cores", "coresused", "activeapps")})
