"""Cutting partitions sorted by key into groups: the core of the sorted plans.

``repartition(P, key).sortWithinPartitions(key)`` puts every row of a group in one partition,
next to each other. A ``mapInPandas`` / ``mapInArrow`` function then sees a stream of batches in
which a group may span batch boundaries; these functions find where the key changes, so one
Python call per partition (not one per group) trains or scores every group in it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd


def key_runs(keys) -> Iterator[tuple[Any, int, int]]:
    """``(key, start, end)`` for each run of equal keys in one Arrow array, in order.

    Nulls form runs of their own (a comparison with a null is null, not "changed", so a plain
    ``not_equal`` would glue the null rows, sorted first, to the next group). The key becomes
    one Python object per run, never one per row.
    """
    import pyarrow.compute as pc

    n = len(keys)
    if n == 0:
        return
    prev, nxt = keys.slice(0, n - 1), keys.slice(1)
    change = pc.fill_null(pc.not_equal(nxt, prev), False)
    if keys.null_count:
        change = pc.or_(change, pc.not_equal(pc.is_null(nxt), pc.is_null(prev)))
    cuts = (np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1).tolist()
    for s, e in zip([0, *cuts], [*cuts, n], strict=True):
        yield keys[s].as_py(), s, e


def split_sorted(batches: Iterable[pd.DataFrame], key: str) -> Iterator[tuple[Any, list]]:
    """Cut a stream of batches sorted by ``key`` into (group, that group's frames).

    A group may span batch boundaries; only the group being assembled is held in memory.
    """
    current = None
    parts: list[pd.DataFrame] = []
    for batch in batches:
        if batch.empty:
            continue
        keys = batch[key].to_numpy()
        # Positions where the key changes inside this batch.
        cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(batch)]
        for s, e in zip(starts, ends, strict=True):
            k = keys[s]
            if parts and k != current:
                yield current, parts
                parts = []
            current = k
            parts.append(batch.iloc[s:e])
    if parts:
        yield current, parts


def split_sorted_arrow(batches: Iterable, key: str,
                       columns: Sequence[str]) -> Iterator[tuple[Any, Iterator[pd.DataFrame]]]:
    """Like :func:`split_sorted`, over Arrow record batches, and lazily: each group comes with an
    iterator over its slices (one pandas frame per batch it spans), read from the stream as the
    consumer asks for them, so a group bigger than memory can be streamed
    (:func:`~lab_utils.training.groups.fit_group` keeps at most ``max_rows`` of it). Consume a
    group's frames before asking for the next group (as with :func:`itertools.groupby`).

    The key column never becomes Python objects per row (one per run of a group), the numeric
    columns become NumPy arrays without a copy.
    """
    wanted = list(dict.fromkeys(columns))

    def runs() -> Iterator[tuple[Any, Any]]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            for k, s, e in key_runs(batch.column(key)):
                yield k, batch.slice(s, e - s)

    def frames(items: Iterator[tuple[Any, Any]]) -> Iterator[pd.DataFrame]:
        for _, part in items:
            yield pd.DataFrame({c: part.column(c).to_numpy(zero_copy_only=False)
                                for c in wanted})

    for k, items in itertools.groupby(runs(), key=lambda item: item[0]):
        yield k, frames(items)
