import stat

import pytest

from lab_utils import envfile


def test_generates_private_secrets_once(tmp_path):
    path = tmp_path / ".env"
    first = envfile.ensure(path)
    assert set(first) == {"JUPYTER_TOKEN", "SPARK_AUTH_SECRET"}
    assert all(len(value) >= 40 for value in first.values())
    assert first["JUPYTER_TOKEN"] != first["SPARK_AUTH_SECRET"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert envfile.ensure(path) == first  # stable across runs


def test_keeps_user_values_and_fills_missing(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# mine\nJUPYTER_TOKEN='chosen-token'\nLAB_WORKERS=3\n")
    values = envfile.ensure(path)
    assert values["JUPYTER_TOKEN"] == "chosen-token"
    assert values["LAB_WORKERS"] == "3"
    assert len(values["SPARK_AUTH_SECRET"]) >= 40
    assert envfile.read(path) == values


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / ".env"
    path.write_text("OK=1\nthis is not a setting\n")
    with pytest.raises(ValueError, match=r"\.env:2: this line is not KEY=VALUE"):
        envfile.read(path)
