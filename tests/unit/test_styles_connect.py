"""The benchmark's settings and driver memory under Spark Connect: read through ``spark.conf``
only, the driver JVM's memory absent with a reason, never a crash on the missing sparkContext."""

from __future__ import annotations

from lab_utils.bench import styles


class _Conf:
    def __init__(self, values: dict[str, str]):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class _ConnectSession:
    """Stands in for a Spark Connect session: ``is_connect`` goes by the class's module, and
    any use of ``sparkContext`` fails the test."""

    def __init__(self, values: dict[str, str]):
        self.conf = _Conf(values)

    @property
    def sparkContext(self):  # noqa: N802 - PySpark's spelling
        raise AssertionError("a Connect session has no sparkContext")


_ConnectSession.__module__ = "pyspark.sql.connect.session"


def test_settings_come_from_the_session_conf_under_connect():
    settings = styles.spark_settings(_ConnectSession({"spark.cores.max": "2",
                                                      "spark.task.cpus": "1"}))
    assert settings["spark.cores.max"] == "2" and settings["spark.task.cpus"] == "1"
    assert settings["spark.executor.memory"] == "default"


def test_driver_memory_under_connect_has_no_jvm_figure_and_says_why():
    rss = styles.driver_rss_mb(_ConnectSession({}))
    assert rss["driver_python_peak_rss_mb"] > 0
    assert rss["driver_jvm_peak_rss_mb"] is None
    assert "Connect server" in rss["driver_jvm_note"]
