"""Sensor data types shared by the simulator, the real drivers, the bus and the policies.

Shapes use the glossary of the whole project: ``R, C`` marker rows and columns (``MARKER_GRID``, 7 x 9: every
pad, recording and embedding of the project), ``H, W`` depth-map rows and columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MARKER_GRID: tuple[int, int] = (7, 9)  # (R, C) markers on a tactile pad
MARKER_ROWS, MARKER_COLS = MARKER_GRID


@dataclass
class MarkerField:
    """A GelSight-like reading of one tactile pad.

    Attributes:
        rest: (R, C, 2) marker positions at rest, in the pad frame, metres (sim) or pixels (camera).
        offset: (R, C, 2) signed marker displacement from rest, same unit as ``rest``.
        depth: (H, W) normal indentation of the gel, metres (0 where nothing touches).
        normal_force: total normal force on the pad, newtons (>= 0; NaN when the source cannot tell).
        shear_force: (2,) total tangential force on the pad along its x and y axes, newtons.
        slip: (2,) force-weighted sliding velocity of the touching surface over the gel, along the pad's
            x and y, m/s (what a real pad reads from the rate of change of its marker field once the
            contact stops sticking; zeros while everything sticks).
        stamp: monotonic time of the reading, seconds.
        unit: ``"m"`` for simulated pads, ``"px"`` for camera-based pads.
    """

    rest: np.ndarray
    offset: np.ndarray
    depth: np.ndarray
    normal_force: float = 0.0
    shear_force: np.ndarray = field(default_factory=lambda: np.zeros(2))
    slip: np.ndarray = field(default_factory=lambda: np.zeros(2))
    stamp: float = 0.0
    unit: str = "m"

    def __post_init__(self) -> None:
        if self.rest.ndim != 3 or self.rest.shape[-1] != 2:
            raise ValueError(f"MarkerField.rest must have shape (R, C, 2), got {self.rest.shape}")
        if self.offset.shape != self.rest.shape:
            raise ValueError(
                f"MarkerField.offset shape {self.offset.shape} does not match rest shape {self.rest.shape}"
            )
        if self.depth.ndim != 2:
            raise ValueError(f"MarkerField.depth must be 2-D (H, W), got shape {self.depth.shape}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        return int(self.rest.shape[0]), int(self.rest.shape[1])

    def flat_offsets(self) -> np.ndarray:
        """(R*C*2,) offsets in row-major marker order, the vector the PCA embedding reads."""
        return self.offset.reshape(-1)
