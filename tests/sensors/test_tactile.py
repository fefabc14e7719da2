import numpy as np
import pytest

from sensors.tactile import GelPad
from sensors.types import MarkerField


def test_shear_moves_markers_along_the_force():
    pad = GelPad()
    for direction in ([1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.6, -0.8]):
        d = np.array(direction)
        f = pad.read(np.zeros((1, 2)), np.array([[*(5.0 * d), 10.0]]))
        mean_offset = f.offset.reshape(-1, 2).mean(axis=0)
        cos = mean_offset @ d / np.linalg.norm(mean_offset)
        assert cos > 0.99, (direction, mean_offset)
        np.testing.assert_allclose(f.shear_force, 5.0 * d)


def test_shear_scales_linearly_and_press_dilates_outward():
    pad = GelPad()
    a = pad.read(np.zeros((1, 2)), np.array([[2.0, 0.0, 10.0]]))
    b = pad.read(np.zeros((1, 2)), np.array([[4.0, 0.0, 10.0]]))
    press = pad.read(np.zeros((1, 2)), np.array([[0.0, 0.0, 10.0]]))
    np.testing.assert_allclose(b.offset - press.offset, 2 * (a.offset - press.offset), atol=1e-12)
    mid = pad.spec.rows // 2
    assert press.offset[mid, -1, 0] > 0 > press.offset[mid, 0, 0]  # markers pushed away from the centre
    assert press.depth.max() > 0 and press.normal_force == pytest.approx(10.0)


def test_depth_follows_contact_location_and_no_contact_is_empty():
    pad = GelPad()
    hx, _ = pad.spec.half_size
    right = pad.read(np.array([[0.7 * hx, 0.0]]), np.array([[0.0, 0.0, 8.0]]))
    cols = right.depth.max(axis=0)
    assert cols.argmax() > right.depth.shape[1] // 2
    empty = pad.read(np.zeros((1, 2)), np.array([[1.0, 1.0, 0.0]]))
    assert not empty.offset.any() and not empty.depth.any()


def test_marker_field_rejects_bad_shapes():
    with pytest.raises(ValueError, match="rest must have shape"):
        MarkerField(rest=np.zeros((7, 9)), offset=np.zeros((7, 9)), depth=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="does not match"):
        MarkerField(rest=np.zeros((7, 9, 2)), offset=np.zeros((7, 8, 2)), depth=np.zeros((3, 3)))
