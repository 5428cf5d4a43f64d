"""One fresh Python, as a notebook kernel starts: import, ``get_spark``, a first tiny query.

``python -m lab_utils.bench.session_probe`` is run by :mod:`lab_utils.bench.session_suite` in
a new process per measurement, with the environment of a kernel of the lab being measured
(``LAB_SPARK_API=connect`` for a Connect session). It prints one line, :data:`MARKER` and a
JSON object of seconds measured from the top of this module (the interpreter's own start is
in the parent's ``process_s``):

* ``import_s``: ``from lab_utils.session import get_spark``;
* ``session_s``: ``get_spark()`` returned a session (a classic one has started its driver JVM
  and registered with the master; a Connect one has reached the server);
* ``query_s``: ``spark.range(10).count()``, the first query (a classic application's executors
  start with it, a Connect server's idle application may have to ask for executors);
* ``ready_s``: all three, the time from a fresh kernel to a first answer.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import json  # noqa: E402  (after the clock starts: the probe times its own imports)
import sys  # noqa: E402

#: Starts the probe's result line on stdout.
MARKER = "SESSION_PROBE "


def main() -> int:
    from lab_utils.session import get_spark

    imported = time.perf_counter()
    spark = get_spark("bench: session probe", quiet=True)
    ready = time.perf_counter()
    rows = spark.range(10).count()
    answered = time.perf_counter()
    api = "connect" if type(spark).__module__.startswith("pyspark.sql.connect") else "classic"
    print(MARKER + json.dumps({
        "api": api, "rows": rows, "spark": spark.version,
        "import_s": imported - _T0, "session_s": ready - imported,
        "query_s": answered - ready, "ready_s": answered - _T0,
    }), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
