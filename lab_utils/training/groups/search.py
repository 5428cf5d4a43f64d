"""Hyperparameter search fanned out over the cluster (joblibspark), classic or Spark Connect.

joblibspark 0.6 runs each batch of fits as a one-task Spark job: ``sparkContext.parallelize``
in classic mode, ``spark.range(1).mapInPandas`` under Spark Connect. It also gives every such
job a stage-level resource profile asking for one CPU per task: exactly the default task, but a
profile of its own. On a cluster with dynamic allocation (the lab's Connect server) a new profile
gets new executors: the search waits for the default executors to idle out (a minute) before its
own start, and the next ordinary job waits again for those. The lab's backend runs the same fits
under the default profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lab_utils.training.groups.runs import task_slots

#: The joblib backend name :func:`search_hyperparameters` registers and uses.
BACKEND = "spark-default-profile"


def _backend_class():
    """joblibspark's backend, its fits run by the application's own executors (no stage-level
    resource profile; see the module's docstring)."""
    from joblibspark.backend import SparkDistributedBackend

    class DefaultProfileSparkBackend(SparkDistributedBackend):
        def _is_support_stage_scheduling(self):  # classic mode asks (and warns wrongly)
            return False

        def _create_resource_profile(self, num_cpus_per_spark_task, num_gpus_per_spark_task):
            self._support_stage_scheduling = False  # Connect mode: plain mapInPandas
            return None  # classic mode: no withResources

    return DefaultProfileSparkBackend


def search_hyperparameters(X: np.ndarray, y: np.ndarray, param_grid: Mapping[str, Sequence],
                           *, estimator=None, cv: int = 3, n_jobs: int | None = None,
                           seed: int = 0, spark=None):
    """scikit-learn's ``GridSearchCV`` with every (candidate, fold) fit run as a Spark task.

    joblibspark is a joblib backend: the search code is plain scikit-learn, and the fits go to
    the cluster instead of local processes, in classic mode and under Spark Connect alike.
    ``n_jobs`` defaults to the application's task slots. Returns the fitted search
    (``best_params_``, ``cv_results_``).

    Examples
    --------
    Two candidates times two folds: four fits, four Spark tasks.

    >>> from sklearn.linear_model import Ridge
    >>> X = np.arange(40.0).reshape(-1, 1)
    >>> y = 3 * X.ravel() + 1
    >>> search = search_hyperparameters(X, y, {"alpha": [0.1, 1e6]}, estimator=Ridge(), cv=2,
    ...                                 spark=spark)
    >>> search.best_params_, len(search.cv_results_["params"])
    ({'alpha': 0.1}, 2)
    """
    import joblib
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import GridSearchCV, KFold

    joblib.register_parallel_backend(BACKEND, _backend_class())
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    jobs = n_jobs or (task_slots(spark) if spark is not None else 1)
    estimator = estimator or GradientBoostingRegressor(random_state=seed)
    search = GridSearchCV(estimator, dict(param_grid), cv=KFold(cv, shuffle=True,
                                                                random_state=seed),
                          scoring="neg_root_mean_squared_error", n_jobs=jobs, refit=True)
    with joblib.parallel_backend(BACKEND, n_jobs=jobs):
        search.fit(X, y)
    return search
