"""Customer event histories to sliding-window training examples: the telecom churn use case.

Three steps, each usable on its own:

1. :func:`generate_churn_data` writes a synthetic but behaviourally consistent data set as
   Parquet (``customers/`` and ``events/``), block by block on the executors, so a few hundred
   customers (smoke) and millions take the same code. Customers who are about to churn call
   less, stop topping up, complain more and sometimes downgrade their plan in the weeks before
   they leave; other customers have holidays and stray complaints, so no single feature gives
   the answer away. The raw events are deliberately dirty, like an ingestion feed: exact
   duplicates, rows out of order, invalid rows (missing customer id, unknown event type,
   negative amounts, clock errors), events of customers not in the customer table, customers
   with no events at all and a few customer records whose churn date precedes their signup.
   How many of each were injected is recorded (``customers.injected_*`` and
   :func:`expected_defects`) so a test can check that cleaning finds exactly those.
2. :func:`clean_events` (Spark SQL): every invalid row is kept in a rejected table with its
   reason, exact duplicates are dropped and counted.
3. :func:`build_windows` (``groupBy(customer).applyInPandas``): each customer's history becomes
   windows of ``window_days`` days every ``stride_days`` days, daily features per window, and
   the label "churns within ``horizon_days`` after the window ends". Windows whose label cannot
   be known yet (the horizon runs past the end of the data) are left out, not labelled 0. The
   per-customer function is :func:`customer_windows`, a pure pandas function tested without
   Spark; a customer it cannot process gets one row with an ``error``, the job goes on.

Customers with no events are not dropped: they are customers too (dormant ones churn), and
get all-zero activity windows over their tenure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: applyInPandas/mapInPandas functions are resolved with it

from lab_utils.common import split

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EVENT_TYPES = ("call", "topup", "complaint", "plan_change")
PLANS = (1, 2, 3)
#: Daily features of a window, in this order (the last axis of ``features``).
FEATURES = ("calls", "call_minutes", "topup_amount", "complaints", "plan")
EVENTS_DDL = "customer_id string, ts timestamp, event_type string, value double"
CUSTOMERS_DDL = ("customer_id string, signup_date date, plan int, churn_date date, "
                 "injected_duplicates int, injected_invalid int")
WINDOWS_DDL = ("customer_id string, window_start int, window_end int, features array<float>, "
               "baseline_calls float, label int, error string")
EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class ChurnSpec:
    """The observation period and generator settings of a churn data set.

    Parameters
    ----------
    n_customers : int
    seed : int
        Same spec, same bytes: every block draws from ``SeedSequence([seed, block, stream])``.
    start : datetime.date
        First day of the event history.
    days : int
        Length of the history.
    block_size : int
        Customers generated per task (a block's events must fit a Python worker's memory:
        ~540 events per customer).
    dirty : bool
        Inject the defects described in the module docstring.
    """

    n_customers: int
    seed: int = 0
    start: dt.date = dt.date(2025, 1, 1)
    days: int = 180
    block_size: int = 5_000
    dirty: bool = True

    @property
    def blocks(self) -> int:
        return -(-self.n_customers // self.block_size)

    @property
    def end(self) -> dt.date:
        return self.start + dt.timedelta(days=self.days)

    def block_range(self, block: int) -> tuple[int, int]:
        first = block * self.block_size
        return first, min(first + self.block_size, self.n_customers)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _customer_params(spec: ChurnSpec, block: int) -> pd.DataFrame:
    """Latent and public attributes of one block's customers (stream 0: cheap, re-drawable)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, block, 0]))
    first, last = spec.block_range(block)
    n = last - first
    signup = np.where(rng.random(n) < 0.8, 0, rng.integers(0, 60, n))
    risk = rng.normal(size=n)
    churn_day = signup + 30 + (rng.random(n) * (spec.days + 60 - signup - 30)).astype(int)
    churns = rng.random(n) < _sigmoid(-1.0 + 1.2 * risk)
    churn_day = np.where(churns, churn_day, 10**6)  # 10**6: never (within any horizon)
    params = pd.DataFrame({
        "customer_id": [f"C{i:09d}" for i in range(first, last)],
        "signup_day": signup,
        "plan": rng.choice(PLANS, n, p=[0.5, 0.35, 0.15]),
        "call_rate": rng.gamma(2.0, 1.5, n),
        "complaint_rate": 0.01 * np.exp(0.4 * risk),
        "churn_day": churn_day,
        "decline_days": rng.integers(21, 43, n),
        "downgrades": rng.random(n) < 0.4,
        "vacation_start": np.where(rng.random(n) < 0.35, rng.integers(0, spec.days, n), -1),
        "vacation_days": rng.integers(7, 15, n),
        "dormant": rng.random(n) < 0.02,
        "record_error": rng.random(n) < 0.005,
    })
    active = ~params["dormant"].to_numpy() & spec.dirty
    params["injected_duplicates"] = np.where(active, rng.poisson(1.0, n), 0)
    params["injected_invalid"] = np.where(active, rng.poisson(0.3, n), 0)
    if not spec.dirty:
        params["dormant"] = False
        params["record_error"] = False
    return params


def customers_block(spec: ChurnSpec, block: int) -> pd.DataFrame:
    """The customer table rows of one block (``CUSTOMERS_DDL``)."""
    p = _customer_params(spec, block)
    day = dt.timedelta(days=1)
    churn_day = p["churn_day"].to_numpy()
    observed = churn_day < spec.days  # a churn after the history ends is not known yet
    # A few broken records: churn dated before signup.
    churn_day = np.where(p["record_error"], p["signup_day"] - 5, churn_day)
    observed |= p["record_error"].to_numpy()
    return pd.DataFrame({
        "customer_id": p["customer_id"],
        "signup_date": [spec.start + int(d) * day for d in p["signup_day"]],
        "plan": p["plan"].astype("int32"),
        "churn_date": [spec.start + int(d) * day if seen else None
                       for d, seen in zip(churn_day, observed, strict=True)],
        "injected_duplicates": p["injected_duplicates"].astype("int32"),
        "injected_invalid": p["injected_invalid"].astype("int32"),
    })


def expected_defects(spec: ChurnSpec) -> dict[str, int]:
    """Rows without a usable customer id that the generator adds: per block, one per 500."""
    if not spec.dirty:
        return {"missing_customer_id": 0, "unknown_customer": 0}
    per_block = [1 + (last - first) // 500 for first, last in map(spec.block_range,
                                                                   range(spec.blocks))]
    return {"missing_customer_id": sum(per_block), "unknown_customer": sum(per_block)}


def events_block(spec: ChurnSpec, block: int) -> pd.DataFrame:
    """The raw (dirty, shuffled) event rows of one block (``EVENTS_DDL``)."""
    p = _customer_params(spec, block)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, block, 1]))
    n, days = len(p), spec.days
    day = np.arange(days)[None, :]
    churn = p["churn_day"].to_numpy()[:, None]
    active = (day >= p["signup_day"].to_numpy()[:, None]) & (day < churn)
    active &= ~p["dormant"].to_numpy()[:, None]
    # Behaviour fades linearly to 10% over the weeks before churn.
    decline = p["decline_days"].to_numpy()[:, None]
    fade = np.clip((churn - day) / decline, 0.0, 1.0)
    level = 0.1 + 0.9 * fade
    vac_start = p["vacation_start"].to_numpy()[:, None]
    on_vacation = (vac_start >= 0) & (day >= vac_start) & (day < vac_start
                                                           + p["vacation_days"].to_numpy()[:, None])
    call_rate = p["call_rate"].to_numpy()[:, None] * level * np.where(on_vacation, 0.25, 1.0)
    plan = p["plan"].to_numpy()

    def expand(mask_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.where(active, mask_counts, 0)
        rows, cols = np.nonzero(counts)
        reps = counts[rows, cols]
        return np.repeat(rows, reps), np.repeat(cols, reps)

    parts = []
    cust, d = expand(rng.poisson(call_rate))
    parts.append((cust, d, "call", np.round(rng.exponential(2.0 + plan[cust]), 2) + 0.05))
    cust, d = expand((rng.random((n, days)) < 0.1 * level ** 2).astype(int))
    parts.append((cust, d, "topup", rng.choice([5.0, 10.0, 20.0], len(cust)) * plan[cust]))
    complaint_rate = p["complaint_rate"].to_numpy()[:, None] + 0.15 * (1 - level)
    cust, d = expand(rng.poisson(complaint_rate))
    parts.append((cust, d, "complaint", np.zeros(len(cust))))
    # Plan changes: a downgrade inside the decline for some churners, stray ones for others.
    change_day = np.where(p["downgrades"] & (p["churn_day"] < 10**6),
                          p["churn_day"] - rng.integers(1, 1 + p["decline_days"]),
                          np.where(rng.random(n) < 0.1, rng.integers(0, days, n), -1))
    has = (change_day >= 0) & (change_day < days)
    has &= active[np.arange(n), np.clip(change_day, 0, days - 1)]
    cust = np.flatnonzero(has)
    step = np.where(p["downgrades"].to_numpy()[cust] & (churn[cust, 0] < 10**6), -1,
                    rng.choice([-1, 1], len(cust)))
    new_plan = np.clip(plan[cust] + step, min(PLANS), max(PLANS))
    parts.append((cust, change_day[cust], "plan_change", new_plan.astype(float)))

    cust = np.concatenate([c for c, *_ in parts])
    days_ = np.concatenate([x for _, x, *_ in parts])
    kinds = np.concatenate([np.full(len(c), k) for c, _, k, _ in parts])
    values = np.concatenate([v for *_, v in parts]).astype(float)
    micros = (days_.astype(np.int64) * 86_400_000_000
              + rng.integers(0, 86_400_000_000, len(cust)))
    ts = np.datetime64(spec.start, "us") + micros.astype("timedelta64[us]")
    ids = p["customer_id"].to_numpy()
    events = pd.DataFrame({"customer_id": ids[cust], "ts": ts, "event_type": kinds,
                           "value": values})
    if spec.dirty:
        events = _inject_defects(events, p, spec, block, rng)
    order = rng.permutation(len(events))  # ingestion order is not event order
    return events.iloc[order].reset_index(drop=True)


def _inject_defects(events: pd.DataFrame, p: pd.DataFrame, spec: ChurnSpec, block: int,
                    rng: np.random.Generator) -> pd.DataFrame:
    want_dup = dict(zip(p["customer_id"], p["injected_duplicates"], strict=True))
    want_bad = dict(zip(p["customer_id"], p["injected_invalid"], strict=True))
    shuffled = events.iloc[rng.permutation(len(events))]
    rank = shuffled.groupby("customer_id").cumcount().to_numpy()
    dup_k = shuffled["customer_id"].map(want_dup).to_numpy()
    bad_k = shuffled["customer_id"].map(want_bad).to_numpy()
    duplicates = shuffled[rank < dup_k]
    # Corrupted copies of other events: each is a new row, so it is rejected, never deduped.
    bad = shuffled[(rank >= dup_k) & (rank < dup_k + bad_k)].copy()
    kind = rng.integers(0, 3, len(bad))
    bad["event_type"] = np.where(kind == 1, "unknwon", bad["event_type"])
    bad["value"] = np.where(kind == 0, -1.0 - bad["value"].abs(), bad["value"])
    bad.loc[kind == 0, "event_type"] = "topup"
    clock_error = bad["ts"].dt.normalize() - pd.Timestamp(EPOCH)  # the same time on 1970-01-01
    bad["ts"] = bad["ts"] - clock_error.where(kind == 2, pd.Timedelta(0))
    k = 1 + len(p) // 500  # as expected_defects() says
    sample = events.iloc[rng.integers(0, max(len(events), 1), k)] if len(events) else events
    no_id = sample.assign(customer_id=None)
    orphans = sample.assign(customer_id=[f"Z{block:06d}{j:04d}" for j in range(len(sample))])
    return pd.concat([events, duplicates, bad, no_id, orphans], ignore_index=True)


# --------------------------------------------------------------------------- Spark: generate


def generate_churn_data(spark: SparkSession, dest, spec: ChurnSpec) -> dict[str, str]:
    """Write ``dest/customers`` and ``dest/events`` (Parquet) for ``spec``, one task per block.

    Returns the paths of the two tables.
    """
    blocks = spark.range(spec.blocks, numPartitions=max(spec.blocks, 1)).withColumnRenamed(
        "id", "block")

    def customers(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            for block in frame["block"]:
                yield customers_block(spec, int(block))

    def events(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            for block in frame["block"]:
                yield events_block(spec, int(block))

    paths = {"customers": f"{dest}/customers", "events": f"{dest}/events"}
    blocks.mapInPandas(customers, CUSTOMERS_DDL).write.mode("overwrite").parquet(
        paths["customers"])
    blocks.mapInPandas(events, EVENTS_DDL).write.mode("overwrite").parquet(paths["events"])
    return paths


# --------------------------------------------------------------------------- Spark: clean

REJECT_REASON_SQL = """
CASE
  WHEN customer_id IS NULL OR trim(customer_id) = '' THEN 'missing customer_id'
  WHEN event_type IS NULL OR event_type NOT IN ({types}) THEN 'unknown event_type'
  WHEN ts IS NULL OR ts < TIMESTAMP '{start}' OR ts >= TIMESTAMP '{end}'
    THEN 'timestamp outside the observation period'
  WHEN value IS NULL OR isnan(value) OR value < 0 THEN 'missing or negative value'
  WHEN event_type = 'plan_change' AND value NOT IN ({plans}) THEN 'unknown plan'
END
"""


def clean_events(events: DataFrame, customers: DataFrame, start: dt.date, end: dt.date,
                 ) -> tuple[DataFrame, DataFrame]:
    """Valid, de-duplicated events and the rejected rows with their ``reject_reason``.

    Nothing is lost: every input row is either in the clean output, a counted exact duplicate
    of a clean row, or in the rejected output. Events of customers missing from ``customers``
    are rejected as ``unknown customer``. Ordering happens per customer, where it is needed
    (in :func:`customer_windows`): a global sort would shuffle every row for nothing.
    """
    from pyspark.sql import functions as F

    reason = F.expr(REJECT_REASON_SQL.format(
        types=", ".join(f"'{t}'" for t in EVENT_TYPES), start=start.isoformat(),
        end=end.isoformat(), plans=", ".join(map(str, PLANS))))
    known = customers.select("customer_id", F.lit(True).alias("_known"))
    checked = (events.withColumn("reject_reason", reason)
               .join(known, "customer_id", "left")  # AQE broadcasts it when small
               .withColumn("reject_reason", F.when(
                   F.col("reject_reason").isNull() & F.col("_known").isNull(),
                   F.lit("unknown customer")).otherwise(F.col("reject_reason")))
               .drop("_known"))
    clean = (checked.where(F.col("reject_reason").isNull()).drop("reject_reason")
             .dropDuplicates(["customer_id", "ts", "event_type", "value"]))
    rejected = checked.where(F.col("reject_reason").isNotNull())
    return clean, rejected


# --------------------------------------------------------------------------- windows


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
            raise ValueError("window_days, stride_days and horizon_days must be at least 1")
        if self.window_days > self.days:
            raise ValueError(f"window_days={self.window_days} is longer than the history "
                             f"({self.days} days)")


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

    Raises
    ------
    ValueError
        An inconsistent customer record (churn before signup); :func:`windows_udf_fn` turns it
        into an error row.
    """
    first = customer.iloc[0]
    cid = first["customer_id"]
    signup, churn = _epoch_day(first["signup_date"]), _epoch_day(first["churn_date"])
    start = (spec.start - EPOCH).days
    end = start + spec.days
    if signup is None:
        raise ValueError(f"customer {cid}: signup_date is missing")
    if churn is not None and churn < signup:
        raise ValueError(f"customer {cid}: churn_date {first['churn_date']} is before "
                         f"signup_date {first['signup_date']}; fix the customer record")
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
    flat = daily.astype(np.float32)
    n = len(offsets)
    features = np.empty(n, dtype=object)
    features[:] = [flat[o:o + w].ravel() for o in offsets]
    return pd.DataFrame({  # whole arrays, no broadcasting: this runs once per customer
        "customer_id": np.full(n, cid, dtype=object),
        "window_start": first_day + offsets,
        "window_end": window_end,
        "features": features,
        "baseline_calls": baseline.astype(np.float32),
        "label": churned.astype(np.int32),
        "error": np.full(n, None, dtype=object),
    })


def windows_udf_fn(spec: WindowSpec):
    """The ``applyInPandas`` function: :func:`customer_windows`, one error row on failure."""

    def windows(customer: pd.DataFrame) -> pd.DataFrame:
        try:
            return customer_windows(customer, spec)
        except Exception as exc:  # one bad customer is one error row, not a dead job
            return pd.DataFrame({"customer_id": [customer["customer_id"].iloc[0]],
                                 "window_start": [None], "window_end": [None],
                                 "features": [None], "baseline_calls": [None], "label": [None],
                                 "error": [f"{type(exc).__name__}: {exc}"]})

    return windows


def build_windows(clean: DataFrame, customers: DataFrame, spec: WindowSpec) -> DataFrame:
    """``groupBy(customer_id).applyInPandas``: every customer's windows (``WINDOWS_DDL``).

    ``customers`` drives it (a left join), so customers without any event get their windows too.
    """
    history = customers.select("customer_id", "signup_date", "plan", "churn_date").join(
        clean.select("customer_id", "ts", "event_type", "value"), "customer_id", "left")
    return history.groupBy("customer_id").applyInPandas(windows_udf_fn(spec), WINDOWS_DDL)


def tfrecord_schema(spec: WindowSpec):
    """The TFRecord schema of the windows (``lab_utils.data.tfrecords``)."""
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
    """Spark column: True for the customers :func:`is_holdout_customer` holds out."""
    return split.held_out_column("customer_id", every)


# --------------------------------------------------------------------------- training


def _model_inputs(x: dict):
    """log1p daily features, with the customer's own baseline as an extra channel."""
    import tensorflow as tf

    seq = tf.math.log1p(tf.maximum(x["features"], 0.0))
    base = tf.math.log1p(tf.reshape(x["baseline_calls"], [-1, 1, 1]))
    return tf.concat([seq, tf.tile(base, [1, tf.shape(seq)[1], 1])], axis=-1)


def rule_scores(x: dict) -> dict[str, np.ndarray]:
    """One-feature rules over a batch of windows (numpy): the baselines the model must beat."""
    feats = np.asarray(x["features"])
    return {
        "complaints in window": feats[:, :, FEATURES.index("complaints")].sum(axis=1),
        "fewer calls in window": -feats[:, :, FEATURES.index("calls")].sum(axis=1),
        "smaller top-ups in window": -feats[:, :, FEATURES.index("topup_amount")].sum(axis=1),
    }


def train_churn_classifier(
    train_dir, test_dir, *, epochs: int = 8, batch_size: int = 128, seed: int = 0,
    model_path=None,
) -> dict[str, Any]:
    """Train a small Keras classifier on TFRecord windows and score the held-out customers.

    Reads both folders with :func:`lab_utils.data.tfrecords.read_tfrecords` (``tf.data``), trains a
    1-D convolution over the daily features, and compares its ROC AUC on the held-out
    customers with chance (0.5) and with each one-feature rule of :func:`rule_scores`.

    Returns
    -------
    dict
        ``auc``, ``rule_auc`` (per rule), ``best_rule``, ``train_windows``, ``test_windows``,
        ``test_positives``, ``history`` (loss per epoch), ``train_seconds``.
    """
    import time

    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from lab_utils.data import tfrecords

    keras.utils.set_random_seed(seed)
    names = ["features", "baseline_calls"]
    train = tfrecords.read_tfrecords(train_dir, label="label", features=names,
                                     batch_size=batch_size, shuffle_buffer=20_000, seed=seed)
    train = train.map(lambda x, y: (_model_inputs(x), tf.cast(y, tf.float32)))
    schema, info = tfrecords.load_schema(train_dir)
    window, channels = schema["features"].shape
    counts = np.zeros(2)
    for _, y in tfrecords.read_tfrecords(train_dir, label="label", features="label",
                                         batch_size=4096).as_numpy_iterator():
        counts += np.bincount(y, minlength=2)[:2]
    # Positives are rare (a few % of windows): weight them up so the model does not ignore them.
    class_weight = {0: 1.0, 1: float(counts[0] / max(counts[1], 1))}
    inputs = keras.Input((window, channels + 1))
    h = keras.layers.Conv1D(16, 3, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy")
    began = time.perf_counter()
    history = model.fit(train, epochs=epochs, class_weight=class_weight, verbose=0)
    seconds = time.perf_counter() - began
    scores, labels, rules = [], [], {}
    for x, y in tfrecords.read_tfrecords(test_dir, label="label", features=names,
                                         batch_size=1024).as_numpy_iterator():
        scores.append(model(_model_inputs(x), training=False).numpy().ravel())
        labels.append(y)
        for name, value in rule_scores(x).items():
            rules.setdefault(name, []).append(value)
    y_true = np.concatenate(labels)
    rule_auc = {name: float(roc_auc_score(y_true, np.concatenate(v))) for name, v in rules.items()}
    if model_path:
        model.save(model_path)
    best = max(rule_auc, key=rule_auc.get)
    return {
        "auc": float(roc_auc_score(y_true, np.concatenate(scores))),
        "rule_auc": rule_auc,
        "best_rule": best,
        "best_rule_auc": rule_auc[best],
        "train_windows": int(counts.sum()),
        "train_positives": int(counts[1]),
        "test_windows": int(len(y_true)),
        "test_positives": int(y_true.sum()),
        "history": [round(float(v), 4) for v in history.history["loss"]],
        "train_seconds": round(seconds, 2),
        "train_records_in_schema": info["records"],
    }


# --------------------------------------------------------------------------- plots


def plot_timeline(events: pd.DataFrame, customer: Any, windows: pd.DataFrame, spec: WindowSpec,
                  ax=None):
    """One customer's daily calls and complaints, with its windows drawn underneath.

    ``events``: that customer's clean events; ``customer``: its customer row (``customer_id``,
    ``signup_date``, ``churn_date``); ``windows``: its rows of :func:`build_windows`.
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
