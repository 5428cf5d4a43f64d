"""Churn generator and per-customer windows, without Spark."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lab_utils.data import churn, churn_windows

SPEC = churn.ChurnSpec(400, seed=3, block_size=200)
WSPEC = churn_windows.WindowSpec(dt.date(2025, 1, 1), 180)  # 14-day windows, stride 7, horizon 28


def test_generator_is_deterministic_per_block():
    pd.testing.assert_frame_equal(churn.events_block(SPEC, 1), churn.events_block(SPEC, 1))
    pd.testing.assert_frame_equal(churn.customers_block(SPEC, 0), churn.customers_block(SPEC, 0))
    other = churn.events_block(churn.ChurnSpec(400, seed=4, block_size=200), 1)
    assert not other.equals(churn.events_block(SPEC, 1))
    ids = pd.concat([churn.customers_block(SPEC, b) for b in range(SPEC.blocks)])["customer_id"]
    assert ids.is_unique and len(ids) == 400  # blocks never overlap


def test_injected_defects_are_exactly_recorded():
    customers = pd.concat([churn.customers_block(SPEC, b) for b in range(SPEC.blocks)])
    events = pd.concat([churn.events_block(SPEC, b) for b in range(SPEC.blocks)])
    expected = churn.expected_defects(SPEC)
    assert expected == {"missing_customer_id": 2, "unknown_customer": 2}
    assert events["customer_id"].isna().sum() == expected["missing_customer_id"]
    known = events["customer_id"].isin(customers["customer_id"])
    assert (~known & events["customer_id"].notna()).sum() == expected["unknown_customer"]
    rows = events[known]
    invalid = (~rows["event_type"].isin(churn.EVENT_TYPES) | (rows["value"] < 0)
               | (rows["ts"] < pd.Timestamp(SPEC.start)))
    assert invalid.sum() == customers["injected_invalid"].sum() > 0
    assert rows[~invalid].duplicated().sum() == customers["injected_duplicates"].sum() > 0
    assert not events["ts"].is_monotonic_increasing  # the feed is out of order
    dormant = set(customers["customer_id"]) - set(events["customer_id"].dropna())
    assert 0 < len(dormant) < 40  # ~2% of customers have no events at all
    broken = customers["churn_date"].notna() & (customers["churn_date"]
                                                < customers["signup_date"])
    assert broken.sum() >= 1


def test_churners_fade_before_they_leave():
    customers = churn.customers_block(SPEC, 0).set_index("customer_id")
    calls = churn.events_block(SPEC, 0).query("event_type == 'call'")
    calls = calls.dropna(subset=["customer_id"])
    calls = calls.assign(day=(calls["ts"] - pd.Timestamp(SPEC.start)).dt.days)
    churned = customers[customers["churn_date"].notna()
                        & (customers["churn_date"] > customers["signup_date"])]
    ratios = []
    for cid, row in churned.iterrows():
        churn_day = (pd.Timestamp(row["churn_date"]) - pd.Timestamp(SPEC.start)).days
        signup = (pd.Timestamp(row["signup_date"]) - pd.Timestamp(SPEC.start)).days
        mine = calls[calls["customer_id"] == cid]["day"]
        early = ((mine >= signup) & (mine < signup + 14)).sum()
        late = ((mine >= churn_day - 14) & (mine < churn_day)).sum()
        if early:
            ratios.append(late / early)
        assert (mine >= churn_day).sum() == 0, cid  # no activity after churning
    assert len(ratios) > 20 and np.median(ratios) < 0.5


def customer(events: list[tuple[str, str, float]], churn: str | None = "2025-03-01",
             signup: str = "2025-01-01", plan: int = 2) -> pd.DataFrame:
    base = {"customer_id": "C1", "signup_date": dt.date.fromisoformat(signup), "plan": plan,
            "churn_date": dt.date.fromisoformat(churn) if churn else None}
    if not events:
        return pd.DataFrame([{**base, "ts": pd.NaT, "event_type": None, "value": np.nan}])
    return pd.DataFrame([{**base, "ts": pd.Timestamp(t), "event_type": k, "value": v}
                         for t, k, v in events])


EVENTS = [
    ("2025-01-20 09:00", "call", 3.0),
    ("2025-01-01 08:00", "call", 1.5),
    ("2025-01-01 20:00", "call", 2.5),
    ("2025-01-03 10:00", "topup", 20.0),
    ("2025-01-05 10:00", "complaint", 0.0),
    ("2025-01-10 00:00", "plan_change", 1.0),
]


def test_windows_features_labels_and_churn_cut():
    out = churn_windows.customer_windows(customer(EVENTS), WSPEC)
    start = (dt.date(2025, 1, 1) - churn.EPOCH).days
    # Churn on day 59: windows must end by then; offsets 0, 7, ..., 42.
    assert (out["window_start"] - start).tolist() == [0, 7, 14, 21, 28, 35, 42]
    assert (out["window_end"] - out["window_start"]).eq(14).all()
    # Label 1 when churn (day 59) < window_end + 28, i.e. window_end > 31.
    assert out["label"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    first = out["features"].iloc[0].reshape(14, len(churn_windows.FEATURES))
    assert first[0, :4].tolist() == [2, 4.0, 0, 0]  # two calls, 1.5 + 2.5 minutes
    assert first[2, 2] == 20.0 and first[4, 3] == 1.0
    assert first[:9, 4].tolist() == [2.0] * 9 and first[9:, 4].tolist() == [1.0] * 5
    assert out["error"].isna().all()
    assert out["baseline_calls"].iloc[0] == pytest.approx(2 / 14)  # no history: its own mean
    assert out["baseline_calls"].iloc[3] == pytest.approx(3 / 21)  # the 21 days before it


def test_windows_ignore_input_order():
    rows = customer(EVENTS)
    shuffled = rows.sample(frac=1, random_state=1)
    a = churn_windows.customer_windows(rows, WSPEC)
    b = churn_windows.customer_windows(shuffled, WSPEC)
    pd.testing.assert_frame_equal(a.drop(columns="features"), b.drop(columns="features"))
    assert all((x == y).all() for x, y in zip(a["features"], b["features"], strict=True))


def test_censored_windows_are_dropped_not_labelled_zero():
    out = churn_windows.customer_windows(customer(EVENTS, churn=None), WSPEC)
    # The data ends on day 180: windows must end by day 152 for the 28-day horizon to be known;
    # with a 7-day stride the last one starts on day 133 and ends on day 147.
    assert (out["window_end"] - out["window_start"].min()).max() == 147
    assert len(out) == 20 and out["label"].eq(0).all()


def test_customer_without_events_gets_zero_activity_windows():
    out = churn_windows.customer_windows(customer([], churn=None, plan=3), WSPEC)
    assert len(out) == 20
    stacked = np.stack(out["features"]).reshape(20, 14, len(churn_windows.FEATURES))
    assert stacked[:, :, :4].sum() == 0 and (stacked[:, :, 4] == 3).all()


def test_inconsistent_customer_is_one_error_row():
    rows = customer(EVENTS, churn="2024-12-20")
    with pytest.raises(ValueError, match="churn_date 2024-12-20 is before signup_date"):
        churn_windows.customer_windows(rows, WSPEC)
    out = churn_windows.windows_udf_fn(WSPEC)(rows)
    assert len(out) == 1 and out["customer_id"].iloc[0] == "C1"
    assert "fix the customer record" in out["error"].iloc[0] and out["features"].iloc[0] is None


@pytest.mark.parametrize("values", [
    [1e308, 1e308],  # each finite, their sum overflows float64
    [1e39],  # finite in float64, inf in the float32 features
    [np.inf],
    [np.nan],
], ids=["sum-overflows", "float32-overflows", "inf", "nan"])
def test_a_window_with_non_finite_features_is_an_error_row_naming_customer_and_day(values):
    hostile = EVENTS + [("2025-01-20 12:00", "call", v) for v in values]  # day 19
    clean = churn_windows.customer_windows(customer(EVENTS), WSPEC)
    out = churn_windows.windows_udf_fn(WSPEC)(customer(hostile))
    start = (dt.date(2025, 1, 1) - churn.EPOCH).days
    # Nothing lost: the same windows; those holding day 19 (offsets 7 and 14) are error rows.
    assert (out["window_start"] - start).tolist() == [0, 7, 14, 21, 28, 35, 42]
    bad = out["error"].notna().to_numpy()
    assert (out["window_start"][bad] - start).tolist() == [7, 14]
    for error in out["error"][bad]:
        assert error.startswith("NonFiniteWindowError: customer C1")
        assert "call_minutes" in error and "2025-01-20" in error
    assert out["features"][bad].isna().all() and out["label"][bad].isna().all()
    assert out["baseline_calls"][bad].isna().all()
    good = out[~bad]
    assert all(np.isfinite(f).all() for f in good["features"])
    assert all((a == b).all() for a, b in zip(good["features"], clean["features"][~bad],
                                              strict=True))
    assert good["label"].tolist() == clean["label"][~bad].tolist()


def test_window_spec_checks_its_sizes():
    with pytest.raises(ValueError, match="at least 1"):
        churn_windows.WindowSpec(dt.date(2025, 1, 1), 180, stride_days=0)
    with pytest.raises(ValueError, match="longer than the history"):
        churn_windows.WindowSpec(dt.date(2025, 1, 1), 10)


def test_holdout_split_is_by_customer_and_about_a_fifth():
    ids = [f"C{i:09d}" for i in range(2000)]
    share = np.mean([churn_windows.is_holdout_customer(i) for i in ids])
    assert 0.15 < share < 0.25
    first = [churn_windows.is_holdout_customer(i) for i in ids[:50]]
    assert first == [churn_windows.is_holdout_customer(i) for i in ids[:50]]


@pytest.mark.parametrize("bound", [0.0, -5.0, float("nan"), float("inf")])
def test_clean_events_refuses_a_bound_that_is_no_bound(bound):
    with pytest.raises(churn.EventBoundError, match="positive finite bound"):
        churn.clean_events(None, None, SPEC.start, SPEC.end, max_value=bound)
