"""What a served model takes, read from its ``metadata.json``: the name and dtype of its one
input, whether it takes image files, and the limits on one predict request derived from its
input shape; and :class:`ServingError`, the error every part of the server answers with.

The registry checks a model's input when it reads the folder (a bad ``input_dtype`` is that
model's error state), the payload parser builds the model's input from a request body, and the
app refuses a body over :func:`max_body_bytes` while it arrives.
"""

from __future__ import annotations

import numpy as np

from lab_utils.common.saved_model import HOW_TO_CREATE, METADATA_FILE, ModelError, ModelSpec
from lab_utils.errors import LabError

#: More instances than this in one request is refused (413): split the batch.
MAX_INSTANCES = 4096
#: ... and more numbers than this in all (images x height x width x channels): 682 images of
#: 32x32x3, 13 of 224x224x3, some 8 MB of compact JSON. One ``json.loads`` call holds the GIL
#: while it runs, so this bound is what keeps ``/healthz`` answering while a request is parsed.
MAX_REQUEST_VALUES = 2 ** 21
#: A model's body limit (:func:`max_body_bytes`) is the worst-case JSON of its largest batch
#: times this margin (whitespace, named instances), plus this slack, capped at the overall cap.
BODY_MARGIN = 2
BODY_SLACK = 64 * 1024
MAX_BODY_BYTES = 256 * 1024 * 1024
#: The name of the model's binary input: TF Serving's convention is a name ending in ``_bytes``.
IMAGE_BYTES_INPUT = "image_bytes"


class ServingError(LabError):
    """An error answered to the client as TF Serving does: ``{"error": message}``, with the
    HTTP ``status`` and any ``headers`` (``Retry-After`` on a 429)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def __reduce__(self) -> tuple[type[ServingError], tuple[int, str, dict[str, str]]]:
        # Raised in the parser's child processes, so it travels back pickled, whole.
        return type(self), (self.status, self.message, self.headers)


def input_name(spec: ModelSpec) -> str:
    """The name of the model's tensor input: ``metadata.json``'s ``input_name`` (``pixels``)."""
    return str(spec.metadata.get("input_name", "pixels"))


def input_dtype(spec: ModelSpec) -> np.dtype:
    """The dtype the model's predict function takes: ``metadata.json``'s ``input_dtype``
    (``uint8`` when absent, as :func:`lab_utils.training.cnn.train` writes it).

    Raises
    ------
    lab_utils.common.saved_model.ModelError
        ``input_dtype`` names no integer or floating-point numpy dtype.
    """
    name = spec.metadata.get("input_dtype", "uint8")
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "uif":
        raise ModelError(f"{spec.path / METADATA_FILE}: input_dtype {name!r} is not an "
                         "integer or float dtype (e.g. 'uint8', 'float32'): "
                         f"{HOW_TO_CREATE}")
    return dtype


def takes_images(spec: ModelSpec) -> bool:
    """True when the server can feed the model decoded image files (``{"b64": ...}`` inputs).

    :func:`~lab_utils.data.images.decode_image` gives RGB uint8, so the model must take 3
    channels and a dtype that holds 0-255 (uint8, a wider integer, or a float).
    """
    dtype = input_dtype(spec)
    holds_255 = dtype.kind == "f" or np.iinfo(dtype).max >= 255
    return spec.channels == 3 and holds_255


def _value_chars(dtype: np.dtype) -> int:
    """The most characters one valid value takes in JSON (``-2.2250738585072014e-308``: 24)."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return max(len(str(info.min)), len(str(info.max)))
    return 24


def max_batch(spec: ModelSpec) -> int:
    """The most images one request may hold: ``MAX_INSTANCES``, and no more than
    ``MAX_REQUEST_VALUES`` numbers in all (at least one image)."""
    h, w = spec.image_size
    return max(1, min(MAX_INSTANCES, MAX_REQUEST_VALUES // (h * w * spec.channels)))


def batch_limits(spec: ModelSpec) -> str:
    """Both limits behind :func:`max_batch`, in words, for the 413 answers."""
    h, w = spec.image_size
    return (f"at most {MAX_INSTANCES} images and {MAX_REQUEST_VALUES} values of "
            f"[{h}, {w}, {spec.channels}] images")


def max_body_bytes(spec: ModelSpec) -> int:
    """The largest request body this model's predict accepts, in bytes.

    The worst-case JSON of :func:`max_batch` images: every value at its longest (``255`` for
    uint8) followed by ``", "``, four bytes of brackets and separator per nested list, times
    ``BODY_MARGIN`` (whitespace, ``{"pixels": ...}`` names) plus ``BODY_SLACK`` for the envelope,
    and never more than ``MAX_BODY_BYTES``. A body over it is refused with 413 as soon as that
    many bytes arrived, whatever its ``Content-Length`` says (or when it has none: chunked).
    """
    h, w = spec.image_size
    values, lists = h * w * spec.channels, 1 + h + h * w
    image = values * (_value_chars(input_dtype(spec)) + 2) + lists * 4
    return min(MAX_BODY_BYTES, max_batch(spec) * image * BODY_MARGIN + BODY_SLACK)
