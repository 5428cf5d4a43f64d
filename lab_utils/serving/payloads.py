"""TF Serving's predict payloads, parsed into the model's input (what the model takes and the
limits on one request: :mod:`lab_utils.serving.inputs`).

``{"instances": [...]}`` (row form) and ``{"inputs": ...}`` (columnar) bodies are checked for
shape, nesting and the values the model's dtype allows *before* an array is built, and every
failure is a :class:`ServingError` answered as TF Serving does (``{"error": message}``).

Binary inputs follow TF Serving's convention: an image file's bytes travel base64-encoded in a
``{"b64": "..."}`` object, per instance (``{"instances": [{"b64": ...}, ...]}``), or under the
model's bytes input, whose name ends in ``_bytes`` (``{"image_bytes": {"b64": ...}}`` in row
form, ``{"inputs": {"image_bytes": [{"b64": ...}, ...]}}`` in columnar form). The server decodes
them with :func:`lab_utils.data.images.decode_image`, the decode in-Spark inference uses, so an
image file sent as bytes is predicted exactly as its decoded pixels sent as lists.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from collections.abc import Callable

import numpy as np

from lab_utils.common.saved_model import ModelSpec
from lab_utils.data import images
from lab_utils.serving.inputs import (
    IMAGE_BYTES_INPUT,
    ServingError,
    batch_limits,
    input_dtype,
    input_name,
    max_batch,
    takes_images,
)

#: At most this many undecodable images are named in one 400 answer.
MAX_NAMED_ERRORS = 10


def _value_text(dtype: np.dtype) -> str:
    """What one input value may be, in words, for the error messages."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return f"a JSON integer from {info.min} to {info.max}"
    return "a finite JSON number"


def _expected(spec: ModelSpec) -> str:
    h, w = spec.image_size
    shape = f"[{h}, {w}, {spec.channels}]"
    dtype = input_dtype(spec)
    binary = (f'; or image files as {{"instances": [{{"b64": "<base64 of a PNG/JPEG file>"}}, '
              f'...]}}, optionally named {{"{IMAGE_BYTES_INPUT}": {{"b64": ...}}}}'
              if takes_images(spec) else "")
    return (f'expected {{"instances": [<image>, ...]}} or {{"inputs": [<image>, ...]}} where '
            f"each <image> is a {shape} nested list of {dtype} values (each "
            f'{_value_text(dtype)}), optionally named {{"{input_name(spec)}": <image>}} in '
            f"row form{binary}")


def _show(value: object) -> str:
    """A JSON value in a message: short, with its JSON type."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, int):
        text = str(value)
        return f"{text if len(text) <= 24 else text[:10] + '...'} (an integer)"
    if isinstance(value, float):
        text = {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, repr(value))
        return f"{'NaN' if math.isnan(value) else text} (a number)"
    if isinstance(value, str):
        text = json.dumps(value)
        return f"{text if len(text) <= 40 else text[:37] + '...'} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"an object with keys {sorted(value)[:5]}" if isinstance(value, dict) else repr(value)


def _shape_of(value: object) -> list[int]:
    """The nested-list shape along the first elements (what an image looks like)."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) < 8:
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _to_array(data: list, where: Callable[[int], str], spec: ModelSpec) -> np.ndarray:
    """Check every image's shape and every value's type and range, then build the array.

    The nesting is checked level by level before any array exists, so a ragged, too deep or
    mistyped batch costs no numpy conversion and gets a message naming the first bad position.
    """
    h, w = spec.image_size
    dims = (h, w, spec.channels)
    expected = _expected(spec)
    dtype = input_dtype(spec)
    level = data
    for depth, size in enumerate(dims):
        for i, item in enumerate(level):
            if type(item) is not list or len(item) != size:
                index = np.unravel_index(i, (len(data), *dims[:depth]))
                k = int(index[0])
                at = "".join(f"[{int(j)}]" for j in index[1:])
                detail = f" ({where(k)}{at} is {_show(item)})" if at else ""
                raise ServingError(400, f"{where(k)} has shape {_shape_of(data[k])}, but the "
                                        f"model takes {list(dims)}{detail}; {expected}")
        level = list(itertools.chain.from_iterable(level))
    values = level

    def bad(i: int, why: str) -> ServingError:
        index = np.unravel_index(i, (len(data), *dims))
        at = "".join(f"[{int(j)}]" for j in index[1:])
        return ServingError(400, f"{where(int(index[0]))}{at} is {_show(values[i])}: {why}; "
                                 f"the model's input is {dtype}, so each value must be "
                                 f"{_value_text(dtype)}; {expected}")

    allowed = (int,) if dtype.kind in "ui" else (int, float)
    if not set(map(type, values)) <= set(allowed):  # bool and str are not numbers here
        first = next(i for i, v in enumerate(values) if type(v) not in allowed)
        raise bad(first, "not " + ("an integer" if dtype.kind in "ui" else "a number"))
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            first = next(i for i, v in enumerate(values) if not info.min <= v <= info.max)
            raise bad(first, "out of range")
        array = np.array(values, dtype=dtype)
    else:
        top = float(np.finfo(dtype).max)
        try:
            wide: np.ndarray | None = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer too large for a float
            wide = None
        if wide is None or not np.isfinite(wide).all() or np.abs(wide).max() > top:
            def fits(v: float) -> bool:  # an int is compared exactly, never made a float
                return abs(v) <= top if type(v) is int else math.isfinite(v) and abs(v) <= top

            first = next(i for i, v in enumerate(values) if not fits(v))
            raise bad(first, "not finite" if isinstance(values[first], float)
                      and not math.isfinite(values[first]) else "out of range")
        array = wide.astype(dtype)
    return array.reshape(len(data), *dims)


def parse_predict_body(body: bytes, spec: ModelSpec) -> tuple[np.ndarray, str]:
    """Decode a predict request into the model's input ``[N, H, W, C]`` and its form.

    Images come as nested lists of pixels or, for a model that :func:`takes_images`, as image
    files in ``{"b64": ...}`` objects (:func:`decode_files`); one request holds one kind.
    Any body that is not a valid request is a :class:`ServingError` with 400, whatever is wrong
    with it (not JSON, nested too deeply, an integer of thousands of digits, a string, a
    boolean or a fraction where the model takes uint8, ...): the JSON parser's own exceptions
    never leave this function.

    Returns
    -------
    (pixels, form)
        ``pixels`` has the model's :func:`input_dtype`; ``form`` is ``"instances"`` (answer
        ``predictions``) or ``"inputs"`` (answer ``outputs``).

    Raises
    ------
    ServingError
        400 naming what is wrong (the first bad value's position and type) and the expected
        shape; 413 for more images than :func:`max_batch`.
    """
    expected = _expected(spec)
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ServingError(400, "the request body is nested too deeply (an image is only "
                                f"[height, width, channels] deep); {expected}") from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise ServingError(400, f"the request body is not valid JSON ({str(exc)[:200]}); "
                                f"{expected}") from None
    if not isinstance(payload, dict):
        raise ServingError(400, f"the request body must be a JSON object, got "
                                f"{type(payload).__name__}; {expected}")
    forms = [k for k in ("instances", "inputs") if k in payload]
    if len(forms) != 1:
        what = "both" if forms else "neither"
        raise ServingError(400, f'the request has {what} of "instances" and "inputs": send '
                                f"exactly one; {expected}")
    signature = payload.get("signature_name", "serving_default")
    if signature != "serving_default":
        shown = repr(signature)[:60] if isinstance(signature, str) else _show(signature)
        raise ServingError(400, f"unknown signature_name {shown}: this model has only "
                                "'serving_default'")
    extra = set(payload) - {"instances", "inputs", "signature_name"}
    if extra:
        raise ServingError(400, f"unexpected keys {sorted(extra)[:10]} in the request; "
                                f"{expected}")
    form = forms[0]
    data = payload[form]
    name = input_name(spec)
    names = (name, IMAGE_BYTES_INPUT) if takes_images(spec) else (name,)
    binary = False
    named_as = f'{{"{name}": <image>}}' + (f' or {{"{IMAGE_BYTES_INPUT}": {{"b64": ...}}}}'
                                            if takes_images(spec) else "")

    def where(k: int) -> str:
        return f"{form}[{k}]"

    if form == "instances":
        if not isinstance(data, list) or not data:
            raise ServingError(400, f'"instances" must be a non-empty list; {expected}')
        if isinstance(data[0], dict) and set(data[0]) != {"b64"}:
            key = next(iter(data[0])) if len(data[0]) == 1 else None
            if key not in names or not all(isinstance(row, dict) and set(row) == {key}
                                           for row in data):
                raise ServingError(400, f"named instances must each be {named_as} (the "
                                        f"model's only input); {expected}")
            data = [row[key] for row in data]
            binary = key == IMAGE_BYTES_INPUT

            def where(k: int) -> str:
                return f'instances[{k}]["{key}"]'
    else:
        if isinstance(data, dict):
            key = next(iter(data)) if len(data) == 1 else None
            if key not in names:
                bytes_too = (f' (or "{IMAGE_BYTES_INPUT}" for image files)'
                             if takes_images(spec) else "")
                raise ServingError(400, f'"inputs" names {sorted(data)[:10]} but the model\'s '
                                        f'only input is "{name}"{bytes_too}; {expected}')
            data = data[key]
            binary = key == IMAGE_BYTES_INPUT

            def where(k: int) -> str:
                return f'inputs["{key}"][{k}]'
        if not isinstance(data, list) or not data:
            raise ServingError(400, f'"inputs" must be a non-empty list of images; {expected}')
    most = max_batch(spec)
    if len(data) > most:
        raise ServingError(413, f"{len(data)} images in one request is more than {most} "
                                f"({batch_limits(spec)}): send smaller batches")
    if binary or (isinstance(data[0], dict) and set(data[0]) == {"b64"}):
        return decode_files(data, where, spec), form
    return _to_array(data, where, spec), form


#: Web-safe base64 (``-``, ``_``) read as the standard alphabet: clients use either.
_WEBSAFE = str.maketrans("-_", "+/")


def decode_files(data: list, where: Callable[[int], str], spec: ModelSpec) -> np.ndarray:
    """``[{"b64": ...}, ...]`` image files -> the model's input ``[N, H, W, 3]``.

    Each file is decoded by :func:`lab_utils.data.images.decode_image`, as in-Spark inference
    decodes it, then cast to the model's :func:`input_dtype`. Every file is tried: a 400 names
    each undecodable one (up to :data:`MAX_NAMED_ERRORS`) with its own reason, so a client can
    tell its bad files from its good ones (the lab's client marks the bad rows and sends the
    rest again).

    Raises
    ------
    ServingError
        400: the model takes no image files, an instance is not ``{"b64": "<string>"}``, or
        files are not valid base64 or not usable images.
    """
    expected = _expected(spec)
    if not takes_images(spec):
        raise ServingError(400, f"this model takes no image files ({{\"b64\": ...}}): its input "
                                f"is [{', '.join(map(str, (*spec.image_size, spec.channels)))}] "
                                f"{input_dtype(spec)}, and decoded files are RGB 0-255; send "
                                f"pixels as nested lists; {expected}")
    h, w = spec.image_size
    pixels = np.empty((len(data), h, w, 3), dtype=input_dtype(spec))
    errors: list[str] = []
    for k, item in enumerate(data):
        if not (isinstance(item, dict) and set(item) == {"b64"}
                and isinstance(item["b64"], str)):
            raise ServingError(400, f'{where(k)} is {_show(item)}: an image file goes in '
                                    f'{{"b64": "<base64 of the file>"}}, and one request holds '
                                    f"either files or pixel lists, not both; {expected}")
        try:
            raw = base64.b64decode(item["b64"].translate(_WEBSAFE), validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: not ASCII
            errors.append(f"{where(k)} is not valid base64 ({exc})")
            continue
        try:
            pixels[k] = images.decode_image(raw, spec.image_size)
        except images.ImageError as exc:
            errors.append(f"{where(k)}: {exc}")
    if errors:
        more = len(errors) - MAX_NAMED_ERRORS
        raise ServingError(400, f"{len(errors)} of {len(data)} image files cannot be used: "
                                + "; ".join(errors[:MAX_NAMED_ERRORS])
                                + (f"; and {more} more" if more > 0 else "")
                                + ": send image files Pillow reads (PNG, JPEG, GIF, ...), or "
                                  "their pixels as nested lists")
    return pixels
