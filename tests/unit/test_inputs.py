"""What a served model takes: the request limits derived from its input shape and dtype."""

from __future__ import annotations

import json

from lab_utils.serving.inputs import MAX_BODY_BYTES, MAX_INSTANCES, max_batch, max_body_bytes
from tests.utils.servers import spec_of


def test_the_body_limit_follows_the_models_input_shape():
    small, digits = spec_of((4, 4)), spec_of((32, 32))
    assert max_batch(small) == MAX_INSTANCES == 4096
    assert max_batch(digits) == 682  # 2**21 values of 32x32x3
    assert max_batch(spec_of((224, 224))) == 13
    assert max_batch(spec_of((2000, 2000))) == 1  # always room for one image
    assert max_body_bytes(small) == 4096 * (48 * 5 + 21 * 4) * 2 + 64 * 1024
    assert max_body_bytes(digits) < 32 * 1024 * 1024  # a 32 MiB body is refused
    assert max_body_bytes(spec_of((2000, 2000), dtype="float64")) == \
        MAX_BODY_BYTES  # the overall cap
    # The largest valid batch, as json.dumps writes it (", " separators), always fits.
    for spec, value in ((small, 255), (digits, 255), (spec_of((4, 4), dtype="float64"),
                                                       -2.2250738585072014e-308)):
        h, w = spec.image_size
        biggest = json.dumps({"instances": [[[[value] * 3] * w] * h] * max_batch(spec)})
        assert len(biggest) <= max_body_bytes(spec)
