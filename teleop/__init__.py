"""Teleoperation: operator input, pose mapping, AR feedback, and the crash-safe episode recorder and dataset format."""
