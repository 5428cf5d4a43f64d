"""Customer event histories to sliding-window training examples (notebook 06).

:func:`build_windows` (``groupBy(customer).applyInPandas``): each customer's history becomes
windows of ``window_days`` days every ``stride_days`` days, daily features per window, and the
label "churns within ``horizon_days`` after the window ends". Windows whose label cannot be
known yet (the horizon runs past the end of the data) are left out, not labelled 0. The
per-customer function is :func:`customer_windows`, a pure pandas function tested without
Spark; a customer it cannot process gets one row with an ``error``, and a window whose features
are not all finite (a NaN or inf event value, a day's sum beyond float32) one error row naming
the customer and the day; the job goes on.

Customers with no events are not dropped: they are customers too (dormant ones churn), and
get all-zero activity windows over their tenure. The events come from
:mod:`lab_utils.data.churn`; the held-out split is by customer (:mod:`lab_utils.common.split`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: applyInPandas functions are resolved with it

from lab_utils.common import split
from lab_utils.data.churn import EPOCH
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: Daily features of a window, in this order (the last axis of ``features``).
FEATURES = ("calls", "call_minutes", "topup_amount", "complaints", "plan")
WINDOWS_DDL = ("customer_id string, window_start int, window_end int, features array<float>, "
               "baseline_calls float, label int, error string")


class WindowSpecError(LabError, ValueError):
    """A :class:`WindowSpec` cannot cut the history into windows; the message names the field."""


class CustomerRecordError(LabError, ValueError):
    """A customer's record contradicts itself (no signup date, churn before signup)."""


class NonFiniteWindowError(LabError, ValueError):
    """A window's features are not all finite. Not raised: :func:`customer_windows` makes the
    window an error row (``"NonFiniteWindowError: ..."``, as a raised error would read) and
    keeps the customer's other windows."""


@dataclass(frozen=True)
class WindowSpec:
    """How histories become examples.

    Parameters
    ----------
    window_days : int
        Days of daily features per example (14 in the seed talk).
    stride_days : int
        Days between the starts of consecutive windows (< window_days: they overlap).
    horizon_days : int
        The label: does the customer churn within this many days after the window ends?
    baseline_days : int
        Days before the window whose mean daily calls become ``baseline_calls`` (each customer
        compared with their own usual level).
    """

    start: dt.date
    days: int
    window_days: int = 14
    stride_days: int = 7
    horizon_days: int = 28
    baseline_days: int = 28

    def __post_init__(self) -> None:
        if min(self.window_days, self.stride_days, self.horizon_days) < 1:
            raise WindowSpecError(f"window_days={self.window_days}, stride_days="
                                  f"{self.stride_days}, horizon_days={self.horizon_days}: each "
                                  "must be at least 1")
        if self.window_days > self.days:
            raise WindowSpecError(f"window_days={self.window_days} is longer than the history "
                                  f"({self.days} days): shorten the window or pass more days")


def _epoch_day(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    return (pd.Timestamp(value).date() - EPOCH).days


def _days(ts: Any) -> np.ndarray:
    """Epoch days of timestamps (pandas/NumPy datetimes), vectorised."""
    return np.asarray(ts, dtype="datetime64[us]").astype("datetime64[D]").astype(np.int64)


def daily_matrix(events: pd.DataFrame, first_day: int, n_days: int) -> np.ndarray:
    """``(n_days, len(FEATURES))`` daily activity of one customer; ``first_day`` in epoch days.

    The ``plan`` column is left at 0 here (:func:`customer_windows` fills the plan in force).
    """
    out = np.zeros((n_days, len(FEATURES)), dtype=np.float64)
    if len(events) and n_days > 0:
        day = _days(events["ts"]) - first_day
        keep = (day >= 0) & (day < n_days)
        day, kind = day[keep], events["event_type"].to_numpy()[keep]
        value = events["value"].to_numpy(dtype=np.float64)[keep]
        for column, name, amount in ((0, "call", False), (1, "call", True),
                                     (2, "topup", True), (3, "complaint", False)):
            sel = kind == name
            out[:, column] = np.bincount(day[sel], weights=value[sel] if amount else None,
                                         minlength=n_days)[:n_days]
    return out


def customer_windows(
    customer: pd.DataFrame, spec: WindowSpec
) -> pd.DataFrame:
    """All windows of one customer (``WINDOWS_DDL`` columns, ``error`` null).

    ``customer`` holds the customer's columns (``customer_id``, ``signup_date``, ``plan``,
    ``churn_date``) on every row plus that customer's events (``ts``, ``event_type``,
    ``value``; null on the single row of a customer without events), in any order.

    A window whose features or baseline are not all finite (an inf or NaN event value, or a
    day whose values sum beyond float32) comes back with its ``window_start``/``window_end``,
    null features, baseline and label, and an ``error`` naming the customer, the day and the
    feature (:class:`NonFiniteWindowError`); :func:`lab_utils.data.churn.clean_events` rejects
    such events first, so this guards any other source of events.

    Raises
    ------
    CustomerRecordError
        An inconsistent customer record (churn before signup); :func:`windows_udf_fn` turns it
        into an error row.

    Examples
    --------
    A customer who signs up on day 0 and leaves on day 50 of 60: 14-day windows every 7 days,
    labelled 1 when the churn falls within the 28 days after the window:

    >>> import datetime as dt
    >>> spec = WindowSpec(start=dt.date(2025, 1, 1), days=60)
    >>> customer = pd.DataFrame({
    ...     "customer_id": "C1", "signup_date": dt.date(2025, 1, 1), "plan": 2,
    ...     "churn_date": dt.date(2025, 2, 20), "event_type": ["call", "complaint"],
    ...     "ts": pd.to_datetime(["2025-01-02 10:00", "2025-01-20 09:30"]), "value": [3.5, 0.0]})
    >>> windows = customer_windows(customer, spec)
    >>> (windows["window_start"] - windows["window_start"][0]).tolist()
    [0, 7, 14, 21, 28, 35]
    >>> windows["label"].tolist(), len(windows["features"][0])  # 14 days x 5 features
    ([0, 0, 1, 1, 1, 1], 70)
    """
    first = customer.iloc[0]
    cid = first["customer_id"]
    signup, churn = _epoch_day(first["signup_date"]), _epoch_day(first["churn_date"])
    start = (spec.start - EPOCH).days
    end = start + spec.days
    if signup is None:
        raise CustomerRecordError(f"customer {cid}: signup_date is missing; fix the customer "
                                  "record")
    if churn is not None and churn < signup:
        raise CustomerRecordError(f"customer {cid}: churn_date {first['churn_date']} is "
                                  f"before signup_date {first['signup_date']}; fix the "
                                  "customer record")
    events = customer[customer["ts"].notna()]
    first_day = max(signup, start)
    active_to = min(churn, end) if churn is not None else end
    n_days = max(active_to - first_day, 0)
    daily = daily_matrix(events, first_day, n_days)
    # The plan in force: the plan at signup, then each change in time order (the feed is not).
    plan = np.full(n_days, float(first["plan"]))
    is_change = (events["event_type"] == "plan_change").to_numpy()
    if is_change.any():
        change_ts = events["ts"].to_numpy()[is_change]
        order = np.argsort(change_ts, kind="stable")
        change_day = _days(change_ts[order]) - first_day
        for d, v in zip(change_day, events["value"].to_numpy()[is_change][order], strict=True):
            plan[max(d, 0):] = v
    daily[:, FEATURES.index("plan")] = plan
    w, s, h = spec.window_days, spec.stride_days, spec.horizon_days
    offsets = np.arange(0, n_days - w + 1, s)
    window_end = first_day + offsets + w  # exclusive: the first day after the window
    churned = (window_end + h > churn) if churn is not None else np.zeros(len(offsets), bool)
    # Censored: the data ends before the horizon does, so the label is unknown: no example.
    keep = churned | (window_end + h <= end)
    offsets, window_end, churned = offsets[keep], window_end[keep], churned[keep]
    calls = np.concatenate([[0.0], np.cumsum(daily[:, 0])])
    lo = np.maximum(offsets - spec.baseline_days, 0)
    history = offsets - lo
    baseline = np.where(history > 0, (calls[offsets] - calls[lo]) / np.maximum(history, 1),
                        (calls[offsets + w] - calls[offsets]) / w)  # no history: its own mean
    with np.errstate(over="ignore"):  # a day beyond float32's range is inf: an error row below
        flat, baseline = daily.astype(np.float32), baseline.astype(np.float32)
    n = len(offsets)
    features = np.empty(n, dtype=object)
    features[:] = [flat[o:o + w].ravel() for o in offsets]
    out = pd.DataFrame({  # whole arrays, no broadcasting: this runs once per customer
        "customer_id": np.full(n, cid, dtype=object),
        "window_start": first_day + offsets,
        "window_end": window_end,
        "features": features,
        "baseline_calls": baseline,
        "label": churned.astype(np.int32),
        "error": np.full(n, None, dtype=object),
    })
    if np.isfinite(flat).all() and np.isfinite(baseline).all():
        return out
    errors = [_non_finite(cid, flat[o:o + w], b, int(first_day + o))
              for o, b in zip(offsets, baseline, strict=True)]
    bad = np.array([e is not None for e in errors], dtype=bool)
    out = out.astype({"baseline_calls": object, "label": object})
    out.loc[bad, ["features", "baseline_calls", "label"]] = None
    out.loc[bad, "error"] = [e for e in errors if e is not None]
    return out


def _non_finite(cid: Any, days: np.ndarray, baseline: float, first_day: int) -> str | None:
    """The error of a window whose ``days`` (days x FEATURES) or baseline are not all finite."""
    bad_day, bad_feature = np.nonzero(~np.isfinite(days))
    if not len(bad_day) and np.isfinite(baseline):
        return None

    def date(day: int) -> str:
        return (EPOCH + dt.timedelta(days=int(day))).isoformat()

    span = f"window {date(first_day)} to {date(first_day + len(days) - 1)}"
    what = f"baseline_calls is {baseline}"
    if len(bad_day):
        day, feature = int(bad_day[0]), int(bad_feature[0])
        what = f"{FEATURES[feature]} is {days[day, feature]} on {date(first_day + day)}"
        if len(bad_day) > 1:
            what += f" ({len(bad_day) - 1} more non-finite values in the window)"
    exc = NonFiniteWindowError(
        f"customer {cid}, {span}: {what}: an event value is NaN or inf, or a day's values sum "
        "beyond float32; reject such events first (lab_utils.data.churn.clean_events rejects "
        "non-finite values and values above MAX_EVENT_VALUE)")
    return _error_text(exc)


def _error_text(exc: Exception) -> str:
    """An error row's ``error``: the class, then the message."""
    return f"{type(exc).__name__}: {exc}"


def windows_udf_fn(spec: WindowSpec):
    """The ``applyInPandas`` function: :func:`customer_windows`, one error row on failure."""

    def windows(customer: pd.DataFrame) -> pd.DataFrame:
        try:
            return customer_windows(customer, spec)
        except Exception as exc:  # one bad customer is one error row, not a dead job
            return pd.DataFrame({"customer_id": [customer["customer_id"].iloc[0]],
                                 "window_start": [None], "window_end": [None],
                                 "features": [None], "baseline_calls": [None], "label": [None],
                                 "error": [_error_text(exc)]})

    return windows


def build_windows(clean: DataFrame, customers: DataFrame, spec: WindowSpec) -> DataFrame:
    """``groupBy(customer_id).applyInPandas``: every customer's windows (``WINDOWS_DDL``).

    ``customers`` drives it (a left join), so customers without any event get their windows too.

    Examples
    --------
    ``C1`` leaves on day 50 of 60; ``C2`` stays and has no events, yet gets the windows whose
    28-day horizon ends within the data:

    >>> import datetime as dt
    >>> spec = WindowSpec(start=dt.date(2025, 1, 1), days=60)
    >>> customers = spark.createDataFrame(
    ...     [("C1", dt.date(2025, 1, 1), 2, dt.date(2025, 2, 20)),
    ...      ("C2", dt.date(2025, 1, 1), 1, None)],
    ...     "customer_id string, signup_date date, plan int, churn_date date")
    >>> events = spark.createDataFrame([("C1", dt.datetime(2025, 1, 2, 10), "call", 3.5)],
    ...                                "customer_id string, ts timestamp, event_type string, "
    ...                                "value double")
    >>> from pyspark.sql import functions as F
    >>> windows = build_windows(events, customers, spec)
    >>> windows.groupBy("customer_id").agg(F.count("*").alias("windows"), F.sum("label").alias(
    ...     "label_1")).orderBy("customer_id").collect()
    [Row(customer_id='C1', windows=6, label_1=4), Row(customer_id='C2', windows=3, label_1=0)]
    """
    history = customers.select("customer_id", "signup_date", "plan", "churn_date").join(
        clean.select("customer_id", "ts", "event_type", "value"), "customer_id", "left")
    return history.groupBy("customer_id").applyInPandas(windows_udf_fn(spec), WINDOWS_DDL)


def tfrecord_schema(spec: WindowSpec):
    """The TFRecord schema of the windows (``lab_utils.data.tfrecords``).

    Examples
    --------
    >>> import datetime as dt
    >>> schema = tfrecord_schema(WindowSpec(start=dt.date(2025, 1, 1), days=60))
    >>> schema.names, schema["features"].shape
    (['customer_id', 'window_end', 'features', 'baseline_calls', 'label'], (14, 5))
    """
    from lab_utils.data.tfrecords import Feature, TFRecordSchema

    return TFRecordSchema((
        Feature("customer_id", "string"),
        Feature("window_end", "int64", (), "first day after the window, days since 1970-01-01"),
        Feature("features", "float32", (spec.window_days, len(FEATURES)),
                "daily " + ", ".join(FEATURES)),
        Feature("baseline_calls", "float32", (), f"mean daily calls over the "
                f"{spec.baseline_days} days before the window"),
        Feature("label", "int64", (), f"1: churns within {spec.horizon_days} days after "
                "window_end"),
    ), metadata={"window_days": spec.window_days, "stride_days": spec.stride_days,
                 "horizon_days": spec.horizon_days, "features": list(FEATURES)})


def is_holdout_customer(customer_id: str, every: int = split.EVERY) -> bool:
    """Deterministic split by customer: overlapping windows of one customer never straddle it.

    The same as Spark's ``crc32(customer_id) % every = 0`` (:func:`holdout_column`).
    """
    return split.is_held_out(str(customer_id), every)


def holdout_column(every: int = split.EVERY):
    """Spark column: True for the customers :func:`is_holdout_customer` holds out.

    Examples
    --------
    Spark holds out the customers Python does, about one in five:

    >>> ids = [f"C{i:09d}" for i in range(100)]
    >>> df = spark.createDataFrame([(i,) for i in ids], "customer_id string")
    >>> held = [r.customer_id for r in df.where(holdout_column()).collect()]
    >>> sorted(held) == [i for i in ids if is_holdout_customer(i)], len(held)
    (True, 20)
    """
    return split.held_out_column("customer_id", every)


def plot_timeline(events: pd.DataFrame, customer: Any, windows: pd.DataFrame, spec: WindowSpec,
                  ax=None):
    """One customer's daily calls and complaints, with its windows drawn underneath.

    ``events``: that customer's clean events; ``customer``: its customer row (``customer_id``,
    ``signup_date``, ``churn_date``); ``windows``: its rows of :func:`build_windows`.

    Examples
    --------
    The customer of :func:`customer_windows`' example, drawn:

    >>> import datetime as dt
    >>> import matplotlib.pyplot as plt
    >>> spec = WindowSpec(start=dt.date(2025, 1, 1), days=60)
    >>> customer = pd.DataFrame({
    ...     "customer_id": "C1", "signup_date": dt.date(2025, 1, 1), "plan": 2,
    ...     "churn_date": dt.date(2025, 2, 20), "event_type": ["call", "complaint"],
    ...     "ts": pd.to_datetime(["2025-01-02 10:00", "2025-01-20 09:30"]), "value": [3.5, 0.0]})
    >>> ax = plot_timeline(customer, customer.iloc[0], customer_windows(customer, spec), spec)
    >>> ax.get_title()
    'customer C1: 6 windows of 14 days every 7 days'
    >>> plt.close(ax.figure)
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(12, 4))
    start = (spec.start - EPOCH).days
    daily = daily_matrix(events, start, spec.days)
    days = np.arange(spec.days)
    ax.bar(days, daily[:, 0], width=1.0, color="tab:blue", alpha=0.6, label="calls per day")
    complaints = np.flatnonzero(daily[:, FEATURES.index("complaints")])
    top = max(float(daily[:, 0].max()), 1.0)
    ax.scatter(complaints, np.full(len(complaints), top * 1.05), marker="v", color="tab:red",
               label="complaint", zorder=3)
    for i, w in enumerate(windows.sort_values("window_start").itertuples()):
        y = -top * (0.12 + 0.1 * (i % 3))  # stagger the overlapping windows
        colour = "tab:red" if w.label == 1 else "0.55"
        ax.plot([w.window_start - start, w.window_end - start], [y, y], color=colour, lw=4,
                solid_capstyle="butt")
    churn = _epoch_day(customer["churn_date"])
    if churn is not None:
        ax.axvline(churn - start, color="tab:red", ls="--", label="churn date")
    ax.plot([], [], color="tab:red", lw=4, label="window, label 1 (churns within horizon)")
    ax.plot([], [], color="0.55", lw=4, label="window, label 0")
    ax.set_xlim(-1, spec.days)
    ax.set_xlabel(f"day since {spec.start}")
    ax.set_title(f"customer {customer['customer_id']}: {len(windows)} windows of "
                 f"{spec.window_days} days every {spec.stride_days} days")
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    return ax
