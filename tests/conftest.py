"""Shared pytest fixtures: where the shared real data lives."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QSMFLOW_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``shared/data`` (set QSMFLOW_SHARED to the ``shared`` folder if it is elsewhere)."""
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d}; set QSMFLOW_SHARED")
    return d
