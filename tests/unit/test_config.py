import ast
import re
from pathlib import Path

import pytest

from lab_utils import config

#: Where the lab's variables are read: the package, compose, the Makefile and the images.
ROOT = Path(__file__).resolve().parents[2]
IMAGE_FOLDERS = ("spark", "jupyterlab", "docker")
#: A LAB_ name as Python, compose (``${LAB_X:-d}``, ``$LAB_X``), make (``$(LAB_X)``,
#: ``LAB_X ?=``) and Dockerfiles write it; ``LAB_PUBLIC_*`` (a family, in prose) is no name.
LAB_NAME = re.compile(r"(?<![A-Za-z0-9_])LAB_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_])")
#: Spark's and Jupyter's own prefixes: only the ones the package reads from os.environ count.
ENVIRON_READ = re.compile(r'environ(?:\.get)?[\(\[]"((?:SPARK|JUPYTER)_[A-Z_]+)"')


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


def test_spark_api_and_connect_settings(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path)})
    assert (cfg.spark_api, cfg.spark_remote, cfg.connect_token) == ("classic", None, None)
    assert (cfg.connect_port, cfg.connect_ui_port, cfg.connect_idle_timeout) == (15002, 4050, 120)
    # The lab's own server is spelled localhost: a token to 127.0.0.1 would ask for TLS.
    assert cfg.connect_url == "sc://localhost:15002"
    cfg = config.load({"LAB_ROOT": str(tmp_path), "LAB_SPARK_API": " Connect ",
                       "LAB_CONNECT_PORT": "16002"})
    assert cfg.spark_api == "connect" and cfg.connect_url == "sc://localhost:16002"
    cfg = config.load({"LAB_ROOT": str(tmp_path), "LAB_SPARK_API": "connect",
                       "LAB_SPARK_REMOTE": "sc://big-cluster:443/;use_ssl=true"})
    assert cfg.connect_url == cfg.spark_remote == "sc://big-cluster:443/;use_ssl=true"
    assert config.load({"LAB_ROOT": str(tmp_path), "LAB_SPARK_API": ""}).spark_api == "classic"


@pytest.mark.parametrize("name, value, message", [
    ("LAB_SPARK_API", "grpc", "LAB_SPARK_API='grpc' is not one of classic, connect"),
    ("LAB_SPARK_REMOTE", "spark://127.0.0.1:7077",
     "LAB_SPARK_REMOTE='spark://127.0.0.1:7077' is not a Spark Connect URL: write it as "
     "sc://host:port"),
    ("LAB_SPARK_REMOTE", "localhost:15002", "LAB_SPARK_REMOTE='localhost:15002' is not a Spark"),
    ("LAB_CONNECT_PORT", "grpc", "LAB_CONNECT_PORT='grpc' is not an integer"),
    ("LAB_CONNECT_IDLE_TIMEOUT", "2m", "LAB_CONNECT_IDLE_TIMEOUT='2m' is not an integer"),
])
def test_bad_connect_settings_name_the_variable(tmp_path, name, value, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load({"LAB_ROOT": str(tmp_path), name: value})


def test_connect_token_from_a_file(tmp_path):
    (tmp_path / "token").write_text("from-a-file\n")
    cfg = config.load({"LAB_ROOT": str(tmp_path),
                       "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE": str(tmp_path / "token")})
    assert cfg.connect_token == "from-a-file"
    env = config.to_env(cfg)  # handed on as the file's name, never its value
    assert "SPARK_CONNECT_AUTHENTICATE_TOKEN" not in env
    assert "from-a-file" not in " ".join(env.values())
    assert config.load(env) == cfg
    with pytest.raises(config.ConfigError, match="SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE=.* is "
                                                 "empty: run `make env`"):
        (tmp_path / "token").write_text("\n")
        config.load(env)


def test_to_env_round_trips(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "s", "LAB_SMOKE": "yes",
                       "LAB_WORKERS": "5", "LAB_DRIVER_HOST": "jupyterlab", "LAB_QUICK": "1",
                       "SPARK_CONNECT_AUTHENTICATE_TOKEN": "t", "LAB_SPARK_API": "connect",
                       "LAB_SPARK_REMOTE": "sc://elsewhere:15002", "LAB_CONNECT_UI_PORT": "4051"})
    assert cfg.quick and config.load(config.to_env(cfg)) == cfg


def test_every_variable_read_is_documented():
    source = Path(config.__file__).read_text()
    read = set(re.findall(r'env(?:\.get\(|, )"([A-Z_]+)"', source))
    assert read, "the pattern must find the variables read"
    assert read <= set(config.VARIABLES), read - set(config.VARIABLES)


def lab_variables_used() -> set[tuple[str, str]]:
    """``(file, variable)`` for every lab variable the lab's files name.

    In the package, any ``LAB_`` name in a string (``env.get("LAB_X")``, ``os.environ["LAB_X"]``,
    ``getenv``, ``project.port("LAB_X", ...)``, ``spark.executorEnv.LAB_X``), whatever the mapping
    is called; in docker-compose.yaml, the Makefile and every file of the images' folders, any
    ``LAB_`` name at all (substitutions, environment keys, ``ENV``, comments that document one).
    """
    used = set()
    for path in sorted((ROOT / "lab_utils").rglob("*.py")):
        source = path.read_text()
        name = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                used |= {(name, var) for var in LAB_NAME.findall(node.value)}
        used |= {(name, var) for var in ENVIRON_READ.findall(source)}
    others = [ROOT / "docker-compose.yaml", ROOT / "Makefile",
              *(p for folder in IMAGE_FOLDERS for p in sorted((ROOT / folder).rglob("*"))
                if p.is_file())]
    for path in others:
        used |= {(str(path.relative_to(ROOT)), var)
                 for var in LAB_NAME.findall(path.read_text(errors="replace"))}
    return used


def test_every_lab_variable_used_anywhere_is_documented():
    used = lab_variables_used()
    # The scan sees each way of writing one: compose's and make's substitutions, make's ?=,
    # a dict called env, os.environ, a Dockerfile's ENV.
    assert LAB_NAME.findall("${LAB_A:-1} $LAB_B $(LAB_C) LAB_D ?= 2 LAB_PUBLIC_*") == [
        "LAB_A", "LAB_B", "LAB_C", "LAB_D"]
    assert {("lab_utils/ops/docker.py", "LAB_IMAGE_TAG"),
            ("lab_utils/ops/docker.py", "LAB_DRIVER_UI_PORT_LAST"),
            ("lab_utils/common/tensorflow.py", "LAB_TF_THREADS"),
            ("docker-compose.yaml", "LAB_WORKER_MEM_LIMIT"),
            ("spark/Dockerfile", "LAB_ROOT")} <= used, "the scan must see every way of reading one"
    undocumented = sorted(f"{path}: {var}" for path, var in used if var not in config.VARIABLES)
    assert not undocumented, ("variables used but not documented in lab_utils.config.VARIABLES "
                              "(add each, with what it does and its default):\n"
                              + "\n".join(undocumented))


#: Modules that import PySpark at import time, and why; TensorFlow stays out of them too.
NEEDS_PYSPARK = {
    "lab_utils.data.tfrecords.datasource": "a Python data source subclasses pyspark's DataSource "
                                           "classes; only get_spark and Spark's workers import it",
}


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
    assert set(NEEDS_PYSPARK) <= set(modules), "stale NEEDS_PYSPARK entry"
    light = [m for m in modules if m not in NEEDS_PYSPARK]
    code = ("import os, sys, importlib; os.chdir(sys.argv[1]); "
            f"[importlib.import_module(m) for m in {light!r}]; "
            "assert 'tensorflow' not in sys.modules and 'pyspark' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'pyspark'}); "
            f"[importlib.import_module(m) for m in {sorted(NEEDS_PYSPARK)!r}]; "
            "assert 'tensorflow' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')")
    env = {"PATH": "/usr/bin:/bin", "LAB_ROOT": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env)
    assert list(tmp_path.iterdir()) == []  # nothing created on import
