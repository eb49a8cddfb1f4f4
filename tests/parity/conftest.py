"""Float64 for the parity tests only: `jax.enable_x64` is a context, entered per test (torch, a
`test` extra, provides the replicas)."""
import jax
import pytest


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
