import stat

import pytest

from lab_utils import envfile


def test_generates_private_secrets_once(tmp_path):
    path = tmp_path / ".env"
    first = envfile.ensure(path)
    assert set(first) == {"JUPYTER_TOKEN", "SPARK_AUTH_SECRET", "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
    assert all(len(value) >= 40 for value in first.values())
    assert len(set(first.values())) == 3  # three independent secrets
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert envfile.ensure(path) == first  # stable across runs


def test_keeps_user_values_and_fills_missing(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# mine\nJUPYTER_TOKEN='chosen-token'\nLAB_WORKERS=3\n")
    values = envfile.ensure(path)
    assert values["JUPYTER_TOKEN"] == "chosen-token"
    assert values["LAB_WORKERS"] == "3"
    assert len(values["SPARK_AUTH_SECRET"]) >= 40
    # A .env from before the Connect server gets its token on the next start.
    assert len(values["SPARK_CONNECT_AUTHENTICATE_TOKEN"]) >= 40
    assert envfile.read(path) == values


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / ".env"
    path.write_text("OK=1\nthis is not a setting\n")
    with pytest.raises(ValueError, match=r"\.env:2: this line is not KEY=VALUE") as caught:
        envfile.read(path)
    assert "not a setting" not in str(caught.value)  # the file holds secrets: no text shown


def test_a_pasted_secret_is_never_shown(tmp_path):
    path = tmp_path / ".env"
    path.write_text("JUPYTER_TOKEN=ok\nkQ3v-pasted-secret-9zX\n")
    with pytest.raises(ValueError, match=r"\.env:2:") as caught:
        envfile.read(path)
    assert "pasted-secret" not in str(caught.value)


def test_export_lines_as_shells_write_them(tmp_path):
    path = tmp_path / ".env"
    path.write_text("export LAB_WORKERS=3\nexport  JUPYTER_TOKEN=\nexport SPARK_AUTH_SECRET='s'\n")
    assert envfile.read(path) == {"LAB_WORKERS": "3", "JUPYTER_TOKEN": "", "SPARK_AUTH_SECRET": "s"}
    values = envfile.ensure(path)  # an empty `export KEY=` counts as missing: generated
    assert len(values["JUPYTER_TOKEN"]) >= 40 and values["SPARK_AUTH_SECRET"] == "s"
    # update() replaces an `export` line instead of adding a second, conflicting one.
    assert envfile.update(path, {"LAB_WORKERS": "4"})["LAB_WORKERS"] == "4"
    assert path.read_text().count("LAB_WORKERS") == 1
