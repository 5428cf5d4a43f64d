"""The ``lab`` command line: one table of commands, and what each promises about ``.env``."""

import stat

import pytest

from lab_utils.ops import cli


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    for key in ("SPARK_AUTH_SECRET", "JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LAB_ROOT", str(tmp_path))
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_every_command_is_in_the_parser_with_its_help():
    help_text = cli.parser().format_help()
    for name in cli.COMMANDS:
        assert name in help_text
    assert {c.env for c in cli.COMMANDS.values()} == {"ensure", "read"}


def test_env_creates_a_private_env_file_once(lab_root, capsys, monkeypatch):
    assert cli.main(["env"]) == 0
    env = lab_root / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    first = env.read_text()
    assert "SPARK_AUTH_SECRET=" in first and "JUPYTER_TOKEN=" in first
    assert "SPARK_CONNECT_AUTHENTICATE_TOKEN=" in first
    for key in ("SPARK_AUTH_SECRET", "JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert cli.main(["env"]) == 0
    assert env.read_text() == first  # secrets are generated once, never rotated by a rerun
    assert ".env holds the Jupyter token, the Spark secret and the Spark Connect token" in (
        capsys.readouterr().out)


def test_status_and_banner_show_the_connect_server_without_its_token(lab_root, capsys):
    assert cli.main(["status"]) == 3  # nothing runs here
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["connect", "stopped"] for line in lines), lines
    cli._print_urls({"jupyter": "j", "master": "m", "master_ui": "mu", "history": "h",
                     "model_server": "ms", "connect": "sc://localhost:15002",
                     "connect_ui": "http://127.0.0.1:4050"})
    out = capsys.readouterr().out
    assert "Spark Connect   sc://localhost:15002  (UI http://127.0.0.1:4050;" in out
    assert "LAB_SPARK_API=connect" in out
    assert not (lab_root / ".env").exists()  # status only reads it


def test_read_only_commands_never_create_env(lab_root, capsys):
    assert cli.main(["health"]) == 1  # no role given, none recorded
    assert "no role given" in capsys.readouterr().err
    assert not (lab_root / ".env").exists()


def test_unknown_role_is_refused_by_the_parser(lab_root):
    with pytest.raises(SystemExit):
        cli.main(["run", "nope"])
