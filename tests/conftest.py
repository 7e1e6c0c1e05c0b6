"""Test configuration.

64-bit mode is *off* by default, as for users: layer and training tests run in
the float32 setting people train in. Tests that need float64 (finite
differences, float64 reference checks) are marked ``@pytest.mark.x64`` (or a
module sets ``pytestmark = pytest.mark.x64``) and run inside
``jax.enable_x64(True)``.

Real-data tests find the datasets themselves: ``$JDLFS_DATA_DIR`` if set,
else ``../shared/data`` beside the repository (the README's data location).
"""

import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not os.environ.get("JDLFS_DATA_DIR") and _SHARED.is_dir():
    os.environ["JDLFS_DATA_DIR"] = str(_SHARED)

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("default", max_examples=8, deadline=None, derandomize=True, suppress_health_check=_HEALTH)
settings.register_profile("thorough", max_examples=60, deadline=None, suppress_health_check=_HEALTH)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config):
    config.addinivalue_line("markers", "x64: run the test with jax_enable_x64 on (float64 checks)")


@pytest.fixture(autouse=True)
def _x64_mode(request):
    """Turn 64-bit mode on for tests marked ``x64``, off (the default) for all others."""
    with jax.enable_x64(request.node.get_closest_marker("x64") is not None):
        yield
