"""Shared fixtures: the repository root and the E3 authors' data beside it (tests only; skipped when absent)."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data/e3`` relative to the repo root; read in place, never copied into the project."""
    path = REPO_ROOT.parent / "shared" / "data" / "e3"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
