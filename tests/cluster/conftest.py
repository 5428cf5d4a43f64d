"""Fixtures for cluster tests that need a whole cluster of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab_utils import config as lab_config
from lab_utils.ops import lab
from tests.utils.labs import lab_env


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
