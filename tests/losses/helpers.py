"""Helpers for the loss tests: the golden tolerance, and hypothesis strategies of fixed shapes (so that a jitted
function compiles once per test, not once per example)."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def assert_close(actual, expected, rtol=1e-5):
    """The golden tolerance, 1e-5 relative; entries near 0 are judged against the array's scale (1e-6 of its max),
    where a relative error means nothing (a 4e-6 gradient entry off by 3e-10)."""
    expected = np.asarray(expected, np.float64)
    atol = 1e-6 * max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def floats(shape, lo=-10.0, hi=10.0):
    """float32 arrays with entries in [lo, hi] (bounds rounded inward to float32), without subnormals: XLA:CPU
    flushes them to zero, so 1e-45 - 0 is 0 there and not in NumPy (no loss cares)."""
    lo, hi = float(np.nextafter(np.float32(lo), np.float32(hi))), float(np.nextafter(np.float32(hi), np.float32(lo)))
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32, allow_subnormal=False))


def logps(shape):
    """Log-probabilities of sampled tokens: (-12, 0]."""
    return floats(shape, -12.0, 0.0)


def masks(shape, min_ones_per_row=1):
    """0/1 int32 masks with at least `min_ones_per_row` ones in each row (last axis)."""
    def fix(m):
        m = m.copy()
        m[..., :min_ones_per_row] = 1
        return m
    return hnp.arrays(np.int32, shape, elements=st.integers(0, 1)).map(fix)


def prefix_masks(batch, width):
    """Completion masks: each row 1 for its first L >= 1 positions, then 0."""
    return st.lists(st.integers(1, width), min_size=batch, max_size=batch).map(
        lambda lengths: (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int32))


def pad_columns(x, k, value=0, axis=1):
    """x [B, T, ...] -> [B, T + k, ...] with k extra positions of `value` (masked padding) along `axis`."""
    widths = [(0, 0)] * np.ndim(x)
    widths[axis] = (0, k)
    return np.pad(np.asarray(x), widths, constant_values=value)
