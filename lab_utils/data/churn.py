"""A telecom churn data set: generated on the executors, then cleaned with Spark SQL.

Two steps of the churn use case (notebook 06); :mod:`lab_utils.data.churn_windows` turns the clean
events into training examples.

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
   reason (non-finite and implausibly large values included: above ``MAX_EVENT_VALUE``), exact
   duplicates are dropped and counted.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd  # at module level: mapInPandas functions are resolved with it

from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EVENT_TYPES = ("call", "topup", "complaint", "plan_change")
PLANS = (1, 2, 3)
EVENTS_DDL = "customer_id string, ts timestamp, event_type string, value double"
CUSTOMERS_DDL = ("customer_id string, signup_date date, plan int, churn_date date, "
                 "injected_duplicates int, injected_invalid int")
EPOCH = dt.date(1970, 1, 1)
#: The largest event value :func:`clean_events` keeps by default. The generator's values stay
#: below about 100 (call minutes ~ exponential with a mean of 3-5, top-ups up to 60, plans 1-3),
#: and a real feed's minutes or currency amounts stay far below it too: a value above it is an
#: ingestion error (a unit slip, a sentinel such as 1e308), not behaviour. The margin is wide
#: (seven orders of magnitude) and still leaves a day's sum of thousands of values far inside
#: float32 (3.4e38), the dtype of the window features.
MAX_EVENT_VALUE = 1e9


class EventBoundError(LabError, ValueError):
    """``clean_events``' ``max_value`` is not a positive finite number."""


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
    """Rows without a usable customer id that the generator adds: per block, one per 500.

    Examples
    --------
    Blocks of 500, 500 and 200 customers: 2 + 2 + 1 rows of each kind.

    >>> expected_defects(ChurnSpec(n_customers=1_200, block_size=500))
    {'missing_customer_id': 5, 'unknown_customer': 5}
    """
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

    Examples
    --------
    200 customers over 60 days, in two blocks (two tasks):

    >>> spec = ChurnSpec(n_customers=200, days=60, block_size=100)
    >>> paths = generate_churn_data(spark, tmp, spec)
    >>> customers = spark.read.parquet(paths["customers"])
    >>> customers.count(), spark.read.parquet(paths["events"]).columns
    (200, ['customer_id', 'ts', 'event_type', 'value'])
    >>> customers.where("churn_date IS NOT NULL").count() > 0
    True
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
  WHEN isnan(value) OR abs(value) = CAST('Infinity' AS DOUBLE) THEN 'non-finite value'
  WHEN value IS NULL OR value < 0 THEN 'missing or negative value'
  WHEN value > CAST('{max_value}' AS DOUBLE) THEN 'value above {max_name} ({max_shown})'
  WHEN event_type = 'plan_change' AND value NOT IN ({plans}) THEN 'unknown plan'
END
"""


def _shown(value: float) -> str:
    """``1e9`` for 1e9, ``1440`` for 1440.0: a bound as a person writes it."""
    return f"{value:g}".replace("e+0", "e").replace("e+", "e")


def clean_events(events: DataFrame, customers: DataFrame, start: dt.date, end: dt.date, *,
                 max_value: float = MAX_EVENT_VALUE) -> tuple[DataFrame, DataFrame]:
    """Valid, de-duplicated events and the rejected rows with their ``reject_reason``.

    Nothing is lost: every input row is either in the clean output, a counted exact duplicate
    of a clean row, or in the rejected output. Events of customers missing from ``customers``
    are rejected as ``unknown customer``. Ordering happens per customer, where it is needed
    (in :func:`customer_windows`): a global sort would shuffle every row for nothing.

    The value checks keep the window features finite: NaN and +-inf are ``non-finite value``;
    NULL and negative values ``missing or negative value``; values above ``max_value`` (kept
    when equal) ``value above MAX_EVENT_VALUE (1e9)``, or ``value above max_value (...)`` for
    another bound. ``max_value`` must be a positive finite number.

    Examples
    --------
    Every row the generator broke on purpose is rejected with its reason, as many as it
    injected (:func:`expected_defects`), and the exact duplicates are gone:

    >>> spec = ChurnSpec(n_customers=200, days=60, block_size=100)
    >>> paths = generate_churn_data(spark, tmp, spec)
    >>> events, customers = spark.read.parquet(paths["events"]), spark.read.parquet(
    ...     paths["customers"])
    >>> clean, rejected = clean_events(events, customers, spec.start, spec.end)
    >>> expected_defects(spec)
    {'missing_customer_id': 2, 'unknown_customer': 2}
    >>> dict(rejected.groupBy("reject_reason").count().orderBy("reject_reason").collect())
    {'missing customer_id': 2, 'missing or negative value': 14,
     'timestamp outside the observation period': 26, 'unknown customer': 2,
     'unknown event_type': 20}
    >>> duplicates = customers.agg({"injected_duplicates": "sum"}).first()[0]
    >>> events.count() == clean.count() + rejected.count() + duplicates
    True

    Values that would poison the features are rejected too, each with its reason:

    >>> hostile = spark.createDataFrame(
    ...     [("C000000000", dt.datetime(2025, 1, 2), "call", v) for v in
    ...      (float("inf"), float("nan"), 1e308, -1.0, 1e9, 3.5)], EVENTS_DDL)
    >>> clean, rejected = clean_events(hostile, customers, spec.start, spec.end)
    >>> [(r.value, r.reject_reason) for r in rejected.orderBy("value").collect()]
    [(-1.0, 'missing or negative value'), (1e+308, 'value above MAX_EVENT_VALUE (1e9)'),
     (inf, 'non-finite value'), (nan, 'non-finite value')]
    >>> sorted(r.value for r in clean.collect())
    [3.5, 1000000000.0]
    """
    from pyspark.sql import functions as F

    if not (math.isfinite(max_value) and max_value > 0):
        raise EventBoundError(f"max_value={max_value!r}: pass a positive finite bound "
                              f"(default MAX_EVENT_VALUE = {_shown(MAX_EVENT_VALUE)})")
    reason = F.expr(REJECT_REASON_SQL.format(
        types=", ".join(f"'{t}'" for t in EVENT_TYPES), start=start.isoformat(),
        end=end.isoformat(), plans=", ".join(map(str, PLANS)), max_value=repr(float(max_value)),
        max_name="MAX_EVENT_VALUE" if max_value == MAX_EVENT_VALUE else "max_value",
        max_shown=_shown(max_value)))
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
