"""Hold-out splits: which rows a model never trains on, decided the same way in Python and Spark.

Every split in the lab holds out one key in :data:`EVERY` and is deterministic (same data, same
split, on any machine, in any partitioning). What differs is the *key*, and choosing it is the
whole lesson: a split must keep together what the model would otherwise memorise.

* images: the source scan (``digit_0005_*.png``), so augmented copies of one scan stay on one
  side (:func:`lab_utils.data.images.holdout`);
* speech clips: the utterance (``yes_en-us_s130_p50``), so noisy copies stay with it
  (:func:`lab_utils.data.speech.holdout`);
* churn windows: the customer, so overlapping windows of one customer never straddle the split
  (:func:`lab_utils.data.churn_windows.is_holdout_customer`);
* per-group models: every fifth row of a group in arrival order (:func:`every_nth`), since the
  rows of one group are independent draws.

String keys are hashed with CRC-32, which Spark has as ``F.crc32``, so :func:`held_out_column`
marks exactly the rows :func:`is_held_out` would. Integer keys (a scan index) are used as they are,
which holds out exactly one in ``every``.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import Column

#: One key in EVERY is held out.
EVERY = 5


def is_held_out(key: str | int, every: int = EVERY) -> bool:
    """True when ``key`` is on the held-out side."""
    if isinstance(key, int):
        return key % every == 0
    return zlib.crc32(key.encode()) % every == 0


def held_out_column(key: Column | str, every: int = EVERY) -> Column:
    """Spark column: True for the rows whose string ``key`` :func:`is_held_out` holds out."""
    from pyspark.sql import functions as F

    column = F.col(key) if isinstance(key, str) else key
    return (F.crc32(column) % every) == 0


def every_nth(n: int, start: int = 0, every: int = EVERY) -> np.ndarray:
    """Boolean mask over ``n`` rows numbered from ``start``: every ``every``-th is held out.

    ``start`` lets a stream of chunks (rows ``start .. start + n - 1``) be split exactly as the
    whole would be.
    """
    return (np.arange(start, start + n) % every) == 0
