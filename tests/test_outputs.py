"""The writers: overlays blend the jet-coloured map into the image at the configured alpha."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.outputs import NEAREST_UP_TO, blend_overlay, jet_lut


def test_overlay_is_jet_of_the_map_blended_with_alpha():
    base = Image.new("RGB", (30, 20), (100, 100, 100))
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[:, :4], colour[:, 4:] = jet_lut()[0], jet_lut()[255]  # left cold, right hot
    out = np.asarray(blend_overlay(base, colour, 0.4)).astype(int)
    assert out.shape == (20, 30, 3)
    np.testing.assert_allclose(out[10, 1], np.round(0.6 * 100 + 0.4 * jet_lut()[0]), atol=1)
    np.testing.assert_allclose(out[10, 28], np.round(0.6 * 100 + 0.4 * jet_lut()[255]), atol=1)


def test_overlay_resizes_a_smooth_map_by_nearest_up_to_3x_then_bilinear():
    ramp = np.repeat(np.linspace(0, 250, 16).astype(np.uint8)[None, :, None], 16, 0)  # (16,16,1)
    colour = np.repeat(ramp, 3, axis=2)  # a gray ramp along x stands in for the jet colours
    black = Image.new("RGB", (40, 40))  # 2.5x: nearest
    near = np.asarray(blend_overlay(black, colour, 1.0))[0, :, 0]
    expected = np.asarray(Image.fromarray(colour).resize((40, 40), Image.NEAREST))[0, :, 0]
    np.testing.assert_array_equal(near, expected)
    assert 2.5 <= NEAREST_UP_TO
    big = np.asarray(blend_overlay(Image.new("RGB", (160, 160)), colour, 1.0))[0, :, 0]
    steps = np.diff(big.astype(int))
    assert steps.max() <= 6 and len(np.unique(big)) > 100  # 10x: interpolated, no 10px blocks
