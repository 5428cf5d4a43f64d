"""Fixtures for cluster tests that need a whole cluster of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab_utils import config as lab_config
from lab_utils.ops import native
from tests.utils.labs import lab_env


@pytest.fixture(scope="package")
def spark(lab_cluster):
    """A SparkSession on the session's test cluster, made by the lab's own session helper.

    Package-scoped: its ``pytest`` application holds 2 of the cluster's 4 cores while it lives,
    so it stops when the cluster tests end, before the browser and notebook layers, whose
    applications need those cores (notebook 03's executors would wait for them forever).
    """
    from lab_utils.session import get_spark

    session = get_spark("pytest", quiet=True)
    yield session
    session.stop()


@pytest.fixture(scope="package")
def private_lab(tmp_path_factory) -> Iterator[lab_config.LabConfig]:
    """A second native lab (2 workers x 2 cores, no JupyterLab, no Connect server) that tests
    may fill or break.

    The session's lab cannot serve these tests: the ``spark`` fixture's application holds 2 of
    its 4 cores while the cluster tests run, and a worker killed there would disturb every
    later test. One private lab is shared by the tests that need one (starting a lab is the
    slow part); each leaves it with both workers ALIVE and no application running, or fails
    saying why. Package-scoped: it stops when the cluster tests end, not at the end of the
    whole run (its JVMs would sit beside the browser and notebook layers).
    """
    cfg = lab_config.load(lab_env(tmp_path_factory.mktemp("private-lab"), workers=2))
    try:
        native.start(cfg, jupyter=False, connect=False, out=lambda *_: None)
        yield cfg
    finally:
        native.stop(cfg, out=lambda *_: None)
