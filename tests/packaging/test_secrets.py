"""No secret in git: the generated .env is ignored and no tracked file carries a credential."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A literal value (not a ${VAR} reference, not empty) given to a credential: assigned
# (KEY=value, key: value), as a (key, value) pair (Spark conf tuples, dicts), or in a URL.
CREDENTIAL = (r"(JUPYTER_TOKEN|SPARK_AUTH_SECRET|SPARK_CONNECT_AUTHENTICATE_TOKEN"
              r"|spark\.authenticate\.secret|spark\.connect\.authenticate\.token"
              r"|ServerApp\.token|password)")
# The value: not a ${VAR} reference and not a name (a list of keys): no variable's name in
# capitals (LAB_CONNECT_PORT), no snake_case name (the secret file spark_connect_token).
# Case-sensitive (the scan is not): a generated value mixes cases, digits, '_' and '-'.
VALUE = (r"""["']?(?!\$\{)(?-i:(?![A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b)(?![a-z]+(?:_[a-z]+)+\b))"""
         r"""([A-Za-z0-9_\-+/]{12,})""")
ASSIGNED = re.compile("|".join((
    CREDENTIAL + r"""["']?\s*[=:]\s*""" + VALUE,          # KEY=value, key: value, "key": "value"
    r"""["']""" + CREDENTIAL + r"""["']\s*,\s*""" + VALUE,  # ("key", "value")
    r"spark\.(?:authenticate\.secret|connect\.authenticate\.token)[ \t]+" + VALUE,  # conf line
    r"[?&;]token=" + VALUE,                       # a URL with its token (sc://host:port/;token=)
)), re.IGNORECASE)


def test_the_scan_finds_each_way_a_credential_is_written():
    # A scan that cannot find these would pass on a leaked secret: each form seen in the wild.
    for text in ("JUPYTER_TOKEN=abcdefghijkl1234", "spark.authenticate.secret s3cr3tvalue123456",
                 "('spark.authenticate.secret', 'abcdefghijkl1234')",
                 '{"spark.authenticate.secret": "abcdefghijkl1234"}',
                 "http://127.0.0.1:8888/lab?token=abcdefghijkl1234", "password: hunter2hunter2",
                 "SPARK_CONNECT_AUTHENTICATE_TOKEN=abcdefghijkl1234",
                 "spark.connect.authenticate.token s3cr3tvalue123456",
                 "sc://localhost:15002/;token=abcdefghijkl1234",
                 "SPARK_CONNECT_AUTHENTICATE_TOKEN=Zx81kq_0pLmN3vB7q"):  # token_urlsafe's '_'
        assert ASSIGNED.search(text), text
    for text in ("JUPYTER_TOKEN: ${JUPYTER_TOKEN:?run make env}", "?token={token}",
                 "JUPYTER_TOKEN_FILE=/run/secrets/jupyter_token",
                 "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE: /run/secrets/spark_connect_token",
                 '("JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN", "LAB_CONNECT_PORT")',
                 '{"jupyter_token": "JUPYTER_TOKEN", "password": "spark_connect_token"}'):
        assert not ASSIGNED.search(text), text


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / name for name in out.stdout.decode().split("\0") if name]


def test_env_file_and_lab_state_are_ignored():
    for path in (".env", ".lab/conf/spark-defaults.conf", ".lab/conf/spark-connect.conf",
                 ".lab/secrets/spark_connect_token", "share_storages/models/x.joblib"):
        res = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert res.returncode == 0, f"{path} is not git-ignored"


def test_no_tracked_file_assigns_a_credential():
    hits = []
    for path in _tracked():
        # Test fixtures use made-up credentials on purpose; everything else is scanned.
        if path.is_relative_to(ROOT / "tests") or path.suffix in {".png", ".jpg", ".lock"}:
            continue
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        hits += [(path.name, m.group(0)) for m in ASSIGNED.finditer(text)]
    assert not hits, hits


def test_the_scan_catches_a_literal_secret():
    assert ASSIGNED.search('SPARK_AUTH_SECRET=Zx81kq0pLmN3vB7q')
    assert ASSIGNED.search('"spark.authenticate.secret": "abcdefghijklmnop"')
    assert not ASSIGNED.search("SPARK_AUTH_SECRET=${SPARK_AUTH_SECRET:?run make env}")
