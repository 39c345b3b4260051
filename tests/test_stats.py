"""Attention statistics against hand-computed values on small synthetic maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from pipeline.stats import STAT_COLUMNS, AttentionStats, attention_stats

NO_BOX = np.zeros((1, 4), np.float32)


def stats_of(m: np.ndarray, box=None) -> dict[str, float]:
    boxes = NO_BOX if box is None else np.array([box], np.float32)
    res = attention_stats(m[None].astype(np.float32), boxes, np.array([box is not None]))
    return {k: float(v.numpy()[0]) for k, v in res._asdict().items()}


def test_single_hot_pixel():
    m = np.zeros((8, 8))
    m[2, 5] = 1.0  # row 2, column 5
    s = stats_of(m, box=(0.5, 0.25, 0.75, 0.375))  # x in [0.5,0.75], y in [0.25,0.375]
    assert s["cam_mean"] == pytest.approx(1 / 64)
    assert s["cam_entropy"] == pytest.approx(0.0)
    assert s["peak_x"] == pytest.approx(5.5 / 8) and s["peak_y"] == pytest.approx(2.5 / 8)
    assert s["centroid_x"] == pytest.approx(5.5 / 8) and s["centroid_y"] == pytest.approx(2.5 / 8)
    assert s["spread"] == pytest.approx(0.0, abs=1e-6)
    assert s["coverage"] == pytest.approx(1 / 64)
    assert s["border_fraction"] == pytest.approx(0.0)  # (2,5) is not in the outer ring of 8x8
    assert s["energy_in_box"] == pytest.approx(1.0)
    assert s["pointing_hit"] == 1.0


def test_hot_pixel_on_border_and_outside_box():
    m = np.zeros((8, 8))
    m[0, 7] = 1.0
    s = stats_of(m, box=(0.0, 0.5, 0.5, 1.0))
    assert s["border_fraction"] == pytest.approx(1.0)
    assert s["energy_in_box"] == pytest.approx(0.0)
    assert s["pointing_hit"] == 0.0


def test_uniform_map():
    m = np.ones((16, 16))
    s = stats_of(m, box=(0.0, 0.0, 0.5, 0.5))
    assert s["cam_mean"] == pytest.approx(1.0)
    assert s["cam_entropy"] == pytest.approx(1.0)
    assert s["centroid_x"] == pytest.approx(0.5) and s["centroid_y"] == pytest.approx(0.5)
    # spread: sqrt(var_x + var_y) of pixel centres; var of (i+0.5)/n over i is (n^2-1)/(12 n^2)
    assert s["spread"] == pytest.approx(math.sqrt(2 * (16**2 - 1) / (12 * 16**2)), rel=1e-5)
    assert s["coverage"] == pytest.approx(1.0)
    assert s["border_fraction"] == pytest.approx(1 - (12 / 16) ** 2)  # outer 2 of 16 each side
    assert s["energy_in_box"] == pytest.approx(0.25)
    assert s["peak_x"] == pytest.approx(0.5 / 16)  # first maximum (row-major) wins


def test_all_zero_map_has_no_mass_statistics():
    s = stats_of(np.zeros((6, 6)), box=(0, 0, 1, 1))
    assert s["cam_mean"] == 0.0 and s["coverage"] == 0.0
    for key in (
        "cam_entropy",
        "peak_x",
        "peak_y",
        "centroid_x",
        "centroid_y",
        "spread",
        "border_fraction",
        "energy_in_box",
        "pointing_hit",
    ):
        assert math.isnan(s[key]), key


def test_two_pixels_half_mass_each():
    m = np.zeros((4, 4))
    m[0, 0] = 1.0
    m[3, 3] = 1.0
    s = stats_of(m)
    assert s["cam_entropy"] == pytest.approx(math.log(2) / math.log(16))
    assert s["centroid_x"] == pytest.approx(0.5) and s["centroid_y"] == pytest.approx(0.5)
    assert s["spread"] == pytest.approx(math.sqrt(2 * 0.375**2))
    assert math.isnan(s["energy_in_box"])  # no box given


def test_fields_are_the_columns_and_compile_in_a_tf_function():
    """A typed result whose fields are the summary columns, eager and inside tf.function alike."""
    rng = np.random.default_rng(1)
    maps = rng.random((3, 6, 10)).astype(np.float32)
    boxes = np.tile(np.array([[0.1, 0.2, 0.6, 0.9]], np.float32), (3, 1))
    valid = np.array([True, False, True])
    eager = attention_stats(maps, boxes, valid)
    compiled = tf.function(attention_stats)(maps, boxes, valid)
    assert isinstance(eager, AttentionStats) and isinstance(compiled, AttentionStats)
    assert STAT_COLUMNS == AttentionStats._fields == tuple(eager._asdict())
    for name in STAT_COLUMNS:
        got = getattr(compiled, name)
        assert got.dtype == tf.float32 and got.shape == (3,), name
        # graph rewrites may round the last bit differently from eager
        np.testing.assert_allclose(
            got.numpy(), getattr(eager, name).numpy(), rtol=1e-6, err_msg=name
        )


def test_batch_is_per_image():
    maps = np.zeros((3, 8, 8), np.float32)
    maps[0, 0, 0] = 1
    maps[1] = 1
    res = attention_stats(maps, np.zeros((3, 4), np.float32), np.zeros(3, bool))
    ent = res.cam_entropy.numpy()
    assert ent[0] == pytest.approx(0) and ent[1] == pytest.approx(1) and math.isnan(ent[2])


def test_peak_taken_on_coarse_map_cell_centre():
    """An edge cell's plateau after upsampling must not pull the peak to the image edge."""
    coarse = np.zeros((1, 7, 7), np.float32)
    coarse[0, 3, 0] = 1.0  # left edge cell, middle row
    up = tf.image.resize(coarse[..., None], (224, 224))[..., 0]
    res = attention_stats(up, np.zeros((1, 4), np.float32), np.zeros(1, bool), coarse=coarse)
    assert float(res.peak_x[0]) == pytest.approx(0.5 / 7)
    assert float(res.peak_y[0]) == pytest.approx(3.5 / 7)


def _reference(m: np.ndarray, box: np.ndarray, valid: bool) -> dict[str, float]:
    """The definitions, pixel by pixel in float64, for one map (h,w)."""
    h, w = m.shape
    gy, gx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    mass = m.sum()
    p = m / mass
    nz = p[p > 0]
    cx, cy = (p * gx).sum(), (p * gy).sum()
    border = (gx < 1 / 8) | (gx > 7 / 8) | (gy < 1 / 8) | (gy > 7 / 8)
    inside = (gx >= box[0]) & (gx <= box[2]) & (gy >= box[1]) & (gy <= box[3])
    return {
        "cam_mean": m.mean(),
        "cam_entropy": -(nz * np.log(nz)).sum() / np.log(h * w),
        "centroid_x": cx,
        "centroid_y": cy,
        "spread": np.sqrt((p * ((gx - cx) ** 2 + (gy - cy) ** 2)).sum()),
        "coverage": (m > 0.5).mean(),
        "border_fraction": p[border].sum(),
        "energy_in_box": p[inside].sum() if valid else np.nan,
    }


def test_random_maps_match_the_pixel_by_pixel_definitions():
    rng = np.random.default_rng(4)
    maps = (rng.random((6, 40, 56)) ** 3).astype(np.float32)
    maps[1, :, :30] = 0  # mass on one side only
    maps[2] = np.where(rng.random((40, 56)) > 0.97, 1.0, 0.0)  # sparse
    corners = rng.random((6, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
    valid = np.array([True, True, True, False, True, True])
    got = {k: v.numpy() for k, v in attention_stats(maps, boxes, valid)._asdict().items()}
    for i in range(len(maps)):
        for key, expected in _reference(maps[i].astype(np.float64), boxes[i], valid[i]).items():
            np.testing.assert_allclose(got[key][i], expected, atol=2e-6, err_msg=f"{key}, map {i}")


# The pointing game in original-image pixels. A 4x8 map on a 160x40 image (width != height):
# each cell is 20 px wide and 10 px high, so the peak of cell (row 1, column 2) is at
# (50, 15) px. Boxes are (x0, y0, x1, y1) in pixels.
W, H = 160, 40
PEAK_CELL = (1, 2)


def hit_at(box_px, tolerance_px: float) -> float:
    m = np.zeros((1, 4, 8), np.float32)
    m[0, PEAK_CELL[0], PEAK_CELL[1]] = 1.0
    box = np.array([box_px], np.float32) / np.array([W, H, W, H], np.float32)
    tol = np.array([[tolerance_px / W, tolerance_px / H]], np.float32)
    res = attention_stats(m, box, np.array([True]), tol)
    assert float(res.peak_x[0]) * W == pytest.approx(50) and float(res.peak_y[0]) * H == 15
    return float(res.pointing_hit[0])


@pytest.mark.parametrize(
    "box,tolerance,expected",
    [
        ((60, 0, 100, 30), 15, 1.0),  # 10 px right of the peak: within 15 px
        ((60, 0, 100, 30), 5, 0.0),  # ... not within 5
        ((60, 0, 100, 30), 0, 0.0),  # ... nor inside (tolerance 0: no division by zero)
        ((0, 0, 40, 30), 15, 1.0),  # 10 px left
        ((0, 0, 40, 30), 5, 0.0),
        ((30, 25, 100, 40), 15, 1.0),  # 10 px below: y is normalised by the height, not width
        ((30, 25, 100, 40), 5, 0.0),
        ((30, 0, 100, 5), 15, 1.0),  # 10 px above
        ((30, 0, 100, 5), 5, 0.0),
        ((40, 10, 60, 20), 0, 1.0),  # inside: a hit at tolerance 0
        ((50, 15, 60, 20), 0, 1.0),  # on the box's corner counts as inside
        ((58, 23, 100, 40), 12, 1.0),  # diagonal: dx = dy = 8 px, distance 11.31
        ((58, 23, 100, 40), 11, 0.0),  # ... beyond 11 px although each axis is within 11
    ],
)
def test_pointing_hit_within_tolerance_in_original_pixels(box, tolerance, expected):
    assert hit_at(box, tolerance) == expected


def test_pointing_tolerance_is_per_image():
    """One batch: the same map and box, each image its own size and tolerance."""
    maps = np.zeros((4, 4, 8), np.float32)
    maps[:, 1, 2] = 1.0  # peak at x = 2.5/8, y = 1.5/4 of each image
    boxes = np.tile(np.array([[0.375, 0.0, 0.625, 0.75]], np.float32), (4, 1))  # right of it
    sizes = np.array([[160, 40], [160, 40], [40, 160], [40, 160]], np.float32)  # (W,H)
    tol_px = np.array([15, 5, 5, 1], np.float32)  # dx is 10 px (W=160) or 2.5 px (W=40)
    res = attention_stats(maps, boxes, np.ones(4, bool), tol_px[:, None] / sizes)
    np.testing.assert_array_equal(res.pointing_hit.numpy(), [1.0, 0.0, 1.0, 0.0])


def test_pointing_without_tolerance_is_inside_only():
    m = np.zeros((8, 8))
    m[2, 5] = 1.0  # peak at (5.5/8, 2.5/8)
    near = (0.0, 0.0, 0.65, 1.0)  # just left of the peak
    assert stats_of(m, box=near)["pointing_hit"] == 0.0
    res = attention_stats(
        m[None].astype(np.float32), np.array([near], np.float32), np.ones(1, bool), np.zeros((1, 2))
    )
    assert float(res.pointing_hit[0]) == 0.0


def test_every_statistic_and_metric_has_its_summary_column():
    """Adding a statistic or a metric needs its schema entry; batch_rows reads every field."""
    from pipeline.metrics import COLUMNS
    from pipeline.summary import SUMMARY_SCHEMA

    assert set(STAT_COLUMNS) <= set(SUMMARY_SCHEMA.names)
    assert set(COLUMNS.values()) <= set(SUMMARY_SCHEMA.names)
