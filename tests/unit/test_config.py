from pathlib import Path

import pytest

from lab_utils import config


def test_defaults_match_the_native_lab(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path)})
    assert cfg.root == tmp_path.resolve()
    assert cfg.share_dir == tmp_path.resolve() / "share_storages"
    assert cfg.events_dir == tmp_path.resolve() / "share_storages" / "spark-events"
    assert cfg.state_dir == tmp_path.resolve() / ".lab"
    assert cfg.notebooks_dir == tmp_path.resolve() / "notebooks"
    assert (cfg.host, cfg.master_port, cfg.master_ui_port) == ("127.0.0.1", 7077, 8080)
    assert (cfg.workers, cfg.history_port, cfg.jupyter_port) == (2, 18080, 8888)
    assert cfg.master_url is None and cfg.auth_secret is None and not cfg.smoke
    assert cfg.lab_master_url == "spark://127.0.0.1:7077"
    assert cfg.arrow_batch == 1024


def test_environment_overrides(tmp_path):
    cfg = config.load({
        "LAB_ROOT": str(tmp_path), "SPARK_MASTER_URL": "spark://big-cluster:7077",
        "LAB_WORKERS": "3", "LAB_WORKER_CORES": "4", "LAB_SMOKE": "1",
        "LAB_MASTER_UI_URL": "http://spark-master:8080",
        "LAB_NOTEBOOKS_DIR": str(tmp_path / "copy"),
    })
    assert cfg.master_url == "spark://big-cluster:7077"
    assert (cfg.workers, cfg.worker_cores, cfg.smoke) == (3, 4, True)
    assert cfg.master_ui_url == "http://spark-master:8080"
    assert cfg.notebooks_dir == (tmp_path / "copy").resolve()


def test_bad_integer_names_the_variable(tmp_path):
    with pytest.raises(ValueError, match="LAB_MASTER_PORT='http' is not an integer"):
        config.load({"LAB_ROOT": str(tmp_path), "LAB_MASTER_PORT": "http"})


def test_to_env_round_trips(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "s", "LAB_SMOKE": "yes",
                       "LAB_WORKERS": "5", "LAB_DRIVER_HOST": "jupyterlab", "LAB_QUICK": "1"})
    assert cfg.quick and config.load(config.to_env(cfg)) == cfg


def test_every_variable_read_is_documented():
    source = Path(config.__file__).read_text()
    import re

    read = set(re.findall(r'env(?:\.get\(|, )"([A-Z_]+)"', source))
    assert read, "the pattern must find the variables read"
    assert read <= set(config.VARIABLES), read - set(config.VARIABLES)


def test_every_lab_variable_read_anywhere_in_the_package_is_documented():
    import re

    import lab_utils

    read = set()
    for path in Path(lab_utils.__file__).parent.rglob("*.py"):
        read |= set(re.findall(r'environ(?:\.get)?[\(\[]"((?:LAB|SPARK|JUPYTER)_[A-Z_]+)"',
                               path.read_text()))
    assert "LAB_TF_THREADS" in read, "the pattern must find the executor-side variable"
    assert read <= set(config.VARIABLES), read - set(config.VARIABLES)


def test_import_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    import lab_utils

    package = Path(lab_utils.__file__).parent
    modules = sorted(  # every module of the package, subpackages included
        ".".join(("lab_utils", *path.relative_to(package).with_suffix("").parts)).removesuffix(
            ".__init__")
        for path in package.rglob("*.py") if path.stem != "__main__"
    )
    assert len(modules) > 20, modules
    code = ("import os, sys, importlib; os.chdir(sys.argv[1]); "
            f"[importlib.import_module(m) for m in {modules!r}]; "
            "assert 'tensorflow' not in sys.modules and 'pyspark' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'pyspark'})")
    env = {"PATH": "/usr/bin:/bin", "LAB_ROOT": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env)
    assert list(tmp_path.iterdir()) == []  # nothing created on import
