"""Shared fixtures: the reference's golden arrays live in ../shared/golden beside the checkout.

The public losses carry shape-typed signatures; here, before anything imports them, jaxtyping's import hook makes
beartype check every call of every test against them (a [B, T] mask handed to a [B, R] slot fails the test)."""
import os

from jaxtyping import install_import_hook

with install_import_hook("losses", "beartype.beartype"):
    import losses  # noqa: F401,E402  (imported under the hook so that every later import gets the checked module)
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from tests.helpers import GOLDEN, REPO, SHARED  # noqa: F401  (re-exported: older test modules import them here)

# JAX compiles on the first call of every new shape: wall-clock deadlines would only measure compilation.
settings.register_profile("default", deadline=None, max_examples=30, print_blob=True)
settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def _need_shared(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):  # CI always has ../shared: a missing fixture there is a failure, not a skip
            pytest.fail(f"{path} is missing in CI")
        pytest.skip(f"{path} not found: parity fixtures come from ../shared beside the checkout")
    return path


@pytest.fixture
def golden():
    """golden('model_dense') -> dict of arrays from ../shared/golden/model_dense.npz."""
    def load(name: str) -> dict:
        path = _need_shared(GOLDEN / f"{name}.npz")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    return load


@pytest.fixture
def golden3():
    """golden3('model_dense') -> dict of arrays from ../shared/minimind3/golden/model_dense.npz (MiniMind-3)."""
    def load(name: str) -> dict:
        path = _need_shared(SHARED / "minimind3" / "golden" / f"{name}.npz")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    return load


@pytest.fixture
def shared_path():
    """shared_path('golden/rewards_format.json') -> Path, skipping where ../shared is absent."""
    return lambda rel: _need_shared(SHARED / rel)
