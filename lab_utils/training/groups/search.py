"""Hyperparameter search fanned out over the cluster (joblibspark)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lab_utils.training.groups.runs import task_slots


def search_hyperparameters(X: np.ndarray, y: np.ndarray, param_grid: Mapping[str, Sequence],
                           *, estimator=None, cv: int = 3, n_jobs: int | None = None,
                           seed: int = 0, spark=None):
    """scikit-learn's ``GridSearchCV`` with every (candidate, fold) fit run as a Spark task.

    joblibspark is a joblib backend: the search code is plain scikit-learn, and the fits go to
    the cluster instead of local processes. ``n_jobs`` defaults to the application's task
    slots. Returns the fitted search (``best_params_``, ``cv_results_``).

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
    from joblibspark import register_spark
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import GridSearchCV, KFold

    register_spark()
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    jobs = n_jobs or (task_slots(spark) if spark is not None else 1)
    estimator = estimator or GradientBoostingRegressor(random_state=seed)
    search = GridSearchCV(estimator, dict(param_grid), cv=KFold(cv, shuffle=True,
                                                                random_state=seed),
                          scoring="neg_root_mean_squared_error", n_jobs=jobs, refit=True)
    with joblib.parallel_backend("spark", n_jobs=jobs):
        search.fit(X, y)
    return search
