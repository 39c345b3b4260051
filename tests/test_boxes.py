"""The step's box inputs: pixel boxes and the pointing tolerance as shares of each image."""

from __future__ import annotations

import numpy as np

from pipeline.boxes import normalise_boxes, normalise_tolerance


def test_tolerance_is_normalised_by_each_images_own_width_and_height():
    orig_hw = np.array([[40, 160], [300, 30], [0, 0]])  # (h, w); the last image did not load
    got = normalise_tolerance(15.0, orig_hw)
    np.testing.assert_allclose(got, [[15 / 160, 15 / 40], [15 / 30, 15 / 300], [15, 15]])
    assert got.dtype == np.float32 and not normalise_tolerance(0.0, orig_hw).any()


def test_boxes_are_normalised_and_bad_ones_explained():
    boxes = np.array(
        [
            [10, 20, 30, 40],  # fine
            [10, np.nan, 30, 40],  # incomplete
            [30, 20, 10, 40],  # x1 < x0
            [0, 0, 500, 40],  # outside the 100x50 image
            [np.nan] * 4,  # no box: no warning
            [10, 20, 30, 40],  # image did not load: nothing
        ]
    )
    orig_hw = np.array([[50, 100]] * 6)
    loaded = np.array([True] * 5 + [False])
    norm, valid, warnings = normalise_boxes(boxes, orig_hw, loaded)
    np.testing.assert_allclose(norm[0], [0.1, 0.4, 0.3, 0.8])
    assert norm.dtype == np.float32 and ((norm >= 0) & (norm <= 1)).all()
    assert valid.tolist() == [True, False, False, False, False, False]
    assert warnings[0] is None and warnings[4] is None and warnings[5] is None
    assert warnings[1].startswith("incomplete box")
    assert "x1<=x0" in warnings[2]
    assert warnings[3] == (
        "box (0, 0, 500, 40) lies outside the 100x50 image; box statistics left empty"
    )
