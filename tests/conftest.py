"""Shared fixtures. Tests must exercise the installed package (with its compiled extension),
not a bare source tree: pytest runs with --import-mode=importlib (see pyproject.toml)."""
import pytest

import fastnn


@pytest.fixture
def threads():
    """Restores the thread count (and whether it adapts) a test changes."""
    saved = fastnn.get_num_threads(), fastnn.build_info()["adaptive_threads"]
    yield
    fastnn.set_num_threads(saved[0], adaptive=saved[1])


@pytest.fixture(autouse=True)
def native_backend():
    """Every test starts on the native backend and leaves it so."""
    fastnn.set_backend("native")
    yield
    fastnn.set_backend("native")
