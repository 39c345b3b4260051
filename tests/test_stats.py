"""Attention statistics against hand-computed values on small synthetic maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.stats import attention_stats

NO_BOX = np.zeros((1, 4), np.float32)


def stats_of(m: np.ndarray, box=None) -> dict[str, float]:
    boxes = NO_BOX if box is None else np.array([box], np.float32)
    res = attention_stats(m[None].astype(np.float32), boxes, np.array([box is not None]))
    return {k: float(v.numpy()[0]) for k, v in res.items()}


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


def test_batch_is_per_image():
    maps = np.zeros((3, 8, 8), np.float32)
    maps[0, 0, 0] = 1
    maps[1] = 1
    res = attention_stats(maps, np.zeros((3, 4), np.float32), np.zeros(3, bool))
    ent = res["cam_entropy"].numpy()
    assert ent[0] == pytest.approx(0) and ent[1] == pytest.approx(1) and math.isnan(ent[2])


def test_peak_taken_on_coarse_map_cell_centre():
    """An edge cell's plateau after upsampling must not pull the peak to the image edge."""
    coarse = np.zeros((1, 7, 7), np.float32)
    coarse[0, 3, 0] = 1.0  # left edge cell, middle row
    import tensorflow as tf

    up = tf.image.resize(coarse[..., None], (224, 224))[..., 0]
    res = attention_stats(up, np.zeros((1, 4), np.float32), np.zeros(1, bool), coarse=coarse)
    assert float(res["peak_x"][0]) == pytest.approx(0.5 / 7)
    assert float(res["peak_y"][0]) == pytest.approx(3.5 / 7)


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
    got = {k: v.numpy() for k, v in attention_stats(maps, boxes, valid).items()}
    for i in range(len(maps)):
        for key, expected in _reference(maps[i].astype(np.float64), boxes[i], valid[i]).items():
            np.testing.assert_allclose(got[key][i], expected, atol=2e-6, err_msg=f"{key}, map {i}")
