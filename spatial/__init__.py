"""Spatial maths shared by every layer: ``spatial.rotations`` converts between rotation vectors, matrices,
unit quaternions and the 6-D representation. numpy and math only, so the bus, the sensors, the simulator and the
policies can all use it.

Import the submodules directly; this package re-exports nothing.
"""
