"""Checks on a model's outputs before they become predictions: one place for every style.

A prediction is the argmax of the model's probabilities and its confidence the probability
itself, so what goes into the argmax must be probabilities: numbers, one row of one value per
class for each image, each finite and in ``[0, 1]`` (the lab's models end in a softmax). NaN,
``inf`` or ``-3`` would otherwise give a confident-looking class (``argmax`` takes the first NaN
as the largest value). Pure functions of numpy arrays and decoded JSON, no Spark:

* :func:`answer_matrix` checks a REST server's decoded ``predictions`` (shape, count, numbers,
  then :func:`row_problems`) and says what is wrong, for the batch's rows' error
  (:mod:`lab_utils.inference.rest_scoring`);
* :func:`row_problems` and :func:`output_problem` check a model's outputs in Spark, row by row
  (:func:`lab_utils.inference.scoring.score_images`, which every UDF style runs, and the image
  partition predictor of :mod:`lab_utils.inference.partition`).

Other output ranges (logits, a regression) are not supported: a model's ``metadata.json``
cannot declare one, and such outputs are refused as not probabilities.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

#: How far outside ``[0, 1]`` a probability may be: float32 rounding of a softmax is ~1e-7,
#: a JSON round trip keeps it, and nothing a model means is that close to the bounds.
PROBABILITY_TOLERANCE = 1e-5
NOT_PROBABILITIES = (f"not probabilities: each must be a finite number in [0, 1] "
                     f"(± {PROBABILITY_TOLERANCE:g}); a model that diverged in training gives NaN "
                     "or inf, one without a softmax output gives values outside [0, 1]")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    return f"{v:.6g}"  # inf, -inf, -3, 1.5


def row_problems(probabilities: np.ndarray) -> dict[int, str]:
    """``{row: value}`` for each row of ``float[rows, classes]`` that holds a value no
    probability can have: its first non-finite value, else its first one outside ``[0, 1]``
    (beyond :data:`PROBABILITY_TOLERANCE`), written as the error names it (``NaN``, ``inf``,
    ``-3``). Rows that are probabilities are absent.

    Examples
    --------
    >>> row_problems(np.array([[0.2, 0.8], [np.nan, 0.5], [-3.0, 7.0], [np.inf, np.nan]]))
    {1: 'NaN', 2: '-3', 3: 'inf'}
    """
    values = np.asarray(probabilities, dtype=np.float64)
    finite = np.isfinite(values)
    inside = finite & (values >= -PROBABILITY_TOLERANCE) & (values <= 1 + PROBABILITY_TOLERANCE)
    problems: dict[int, str] = {}
    for row in np.flatnonzero(~inside.all(axis=1)):
        nonfinite = np.flatnonzero(~finite[row])
        k = nonfinite[0] if len(nonfinite) else np.flatnonzero(~inside[row])[0]
        problems[int(row)] = _value(float(values[row, k]))
    return problems


def row_error(value: str) -> str:
    """A row's error when the model's output for its image holds ``value``."""
    return f"the model's output for this image has {value}: {NOT_PROBABILITIES}"


def output_problem(output: Any, class_names: tuple[str, ...]) -> str | None:
    """The error of one image whose model output is ``output`` (None: it is one probability per
    class of ``class_names``), for a row-by-row predictor."""
    values = np.asarray(output)
    if values.shape != (len(class_names),) or not np.issubdtype(values.dtype, np.number):
        return (f"the model's output for this image has shape {list(values.shape)} "
                f"({values.dtype}); expected {len(class_names)} probabilities for "
                f"{class_names}")
    problem = row_problems(values[np.newaxis]).get(0)
    return None if problem is None else row_error(problem)


# --------------------------------------------------------------------------- a server's answer


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _not_number(answer: list) -> tuple[int, Any] | None:
    """``(row, value)`` of the first value in ``answer`` that is neither a number nor a list."""
    for row, item in enumerate(answer):
        stack = [item]
        while stack:
            value = stack.pop()
            if isinstance(value, list):
                stack.extend(reversed(value))
            elif not _is_number(value):
                return row, value
    return None


def _kind(value: Any) -> str:
    """What a JSON value is, as an error names it: ``a string "high"``, ``null``."""
    if value is None:
        return "null"
    kinds = {str: "a string", dict: "an object", bool: "a boolean"}
    text = json.dumps(value, default=str)
    return f"{kinds.get(type(value), type(value).__name__)} {text[:60]}"


def _join(sizes: list[int]) -> str:
    words = [str(s) for s in sizes]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def answer_matrix(answer: Any, rows: int,
                  class_names: tuple[str, ...]) -> tuple[np.ndarray | None, str | None]:
    """A server's decoded ``predictions`` for ``rows`` images as ``float64[rows, classes]``, or
    what is wrong with them: ``(matrix, None)`` or ``(None, "answered ...")``, the error
    completed by who answered.

    In order: a value that is not a number (a string, an object, null), rows of unequal length,
    the wrong shape (count or classes), values that are not probabilities
    (:func:`row_problems`; then none of the batch is used: an answer that is wrong in one row is
    not trusted in the others).

    Examples
    --------
    >>> answer_matrix([[0.25, 0.75]], 1, ("dark", "light"))
    (array([[0.25, 0.75]]), None)
    >>> print(answer_matrix([["high", "low"]], 1, ("dark", "light"))[1])
    answered a string "high" (row 0), not a number; expected [1, 2] probabilities for
    ('dark', 'light'): is it serving the same model?
    """
    expected = (f"expected [{rows}, {len(class_names)}] probabilities for {class_names}: is it "
                "serving the same model?")
    if not isinstance(answer, list) and not _is_number(answer):
        return None, f"answered {_kind(answer)} as its predictions, not a list; {expected}"
    bad = _not_number(answer) if isinstance(answer, list) else None
    if bad is not None:
        return None, f"answered {_kind(bad[1])} (row {bad[0]}), not a number; {expected}"
    try:
        matrix = np.asarray(answer, dtype=np.float64)
    except ValueError:  # rows of unequal length
        sizes = sorted({len(r) if isinstance(r, list) else 1 for r in answer})
        unequal = (f"of unequal length ({_join(sizes)} values)" if len(sizes) > 1 else
                   "of unequal shapes")
        return None, f"answered {len(answer)} predictions {unequal} for {rows} images; {expected}"
    except OverflowError:  # an integer beyond float64
        return None, f"answered a number too large for a float; {expected}"
    if matrix.shape != (rows, len(class_names)):
        return None, f"answered shape {list(matrix.shape)} for {rows} images; {expected}"
    problems = row_problems(matrix)
    if problems:
        first = min(problems)
        more = len(problems) - 1
        others = f", and {more} more row{'s' if more > 1 else ''}" if more else ""
        return None, (f"answered {rows} predictions of {len(class_names)} values, one of them "
                      f"{problems[first]} (row {first}{others}): {NOT_PROBABILITIES}; none of "
                      f"the {rows} is used")
    return matrix, None
