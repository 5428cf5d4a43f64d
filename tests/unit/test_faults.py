"""Fault injection, through the model server's app (fake models, FastAPI TestClient): off by
default, seeded (same seed, same faults), counted in ``/stats``; bad settings refused."""

from __future__ import annotations

import pytest

from lab_utils.serving.faults import Faults, FaultSettingsError
from tests.utils.servers import client_for, image, served_models


@pytest.fixture
def models_dir(tmp_path):
    return served_models(tmp_path)


def test_faults_are_off_by_default(models_dir):
    with client_for(models_dir) as client:
        codes = [client.post("/v1/models/tiny:predict", json={"instances": [image(0)]})
                 .status_code for _ in range(20)]
        assert codes == [200] * 20
        stats = client.get("/stats").json()
        assert stats["injected_errors"] == 0 and stats["faults"]["fail_rate"] == 0.0


def test_fault_injection_is_seeded_and_counted(models_dir):
    def run(seed):
        faults = Faults(fail_rate=0.3, seed=seed)
        with client_for(models_dir, faults) as client:
            codes = [client.post("/v1/models/tiny:predict",
                                 json={"instances": [image(0)] * 2}).status_code
                     for _ in range(40)]
            return codes, client.get("/stats").json()

    codes, stats = run(seed=1)
    assert codes == run(seed=1)[0]  # same seed, same faults
    assert codes != run(seed=2)[0]
    failed = codes.count(503)
    assert set(codes) == {200, 503} and 4 <= failed <= 20  # about 30% of 40
    assert stats["injected_errors"] == failed and stats["injected_error_rows"] == 2 * failed
    assert stats["rows_answered"] == 2 * (40 - failed)


def test_delay_injection_sleeps_before_answering(models_dir):
    import time

    faults = Faults(delay=0.3, delay_rate=1.0)
    with client_for(models_dir, faults) as client:
        began = time.perf_counter()
        response = client.post("/v1/models/tiny:predict", json={"instances": [image(0)]})
        assert response.status_code == 200 and time.perf_counter() - began >= 0.3
        assert client.get("/stats").json()["delayed"] == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"fail_rate": 1.5}, "fail_rate=1.5 must be between 0 and 1"),
    ({"delay_rate": -0.1}, "delay_rate=-0.1"),
    ({"delay": -1}, "delay=-1 must be >= 0"),
])
def test_bad_fault_settings_are_refused(kwargs, message):
    with pytest.raises(FaultSettingsError, match=message):
        Faults(**kwargs)
