"""Fixtures shared by the rdp tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_runtime_units import make_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seconds-long training run (real files, meaningless weights), made once per session for the runtime tests
    (a test module that defines its own ``tiny_run`` keeps using that one)."""
    return make_tiny_run(tmp_path_factory.mktemp("runtime_ckpt"))
