"""common.split: one key in five held out, deterministically, by the key the lesson needs."""

import numpy as np

from lab_utils.common import split
from lab_utils.data import churn_windows, images, speech


def test_string_keys_are_about_a_fifth_and_stable():
    keys = [f"C{i:05d}" for i in range(5000)]
    share = np.mean([split.is_held_out(k) for k in keys])
    assert 0.17 < share < 0.23
    assert split.is_held_out("C00042") == split.is_held_out("C00042")


def test_integer_keys_hold_out_exactly_one_in_every():
    assert [i for i in range(12) if split.is_held_out(i)] == [0, 5, 10]
    assert [i for i in range(7) if split.is_held_out(i, every=3)] == [0, 3, 6]


def test_every_nth_splits_a_stream_as_it_splits_the_whole():
    whole = split.every_nth(23)
    chunks = np.concatenate([split.every_nth(10, 0), split.every_nth(10, 10),
                             split.every_nth(3, 20)])
    assert (whole == chunks).all() and whole.sum() == 5


def test_the_lab_splits_use_it_with_their_own_keys():
    assert churn_windows.is_holdout_customer("C00042") == split.is_held_out("C00042")
    clip = "yes_en-us_s130_p50"
    assert speech.holdout(f"/data/yes/{clip}_n1.wav") == split.is_held_out(clip)
    assert images.holdout("digit_0010_003.png") is True  # scan 10
    assert images.holdout("my photo.png") == split.is_held_out("my photo.png")
