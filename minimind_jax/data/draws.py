"""The random choices a data set makes per row, as a pure function of (seed, epoch, row, stream).

MiniMind-3's data sets flip coins per sample (inject a system prompt? drop the empty think block? open the
thinking?). Drawing them from a hash of the row's coordinates instead of a running generator means a row gets
the same draw whichever batch, process or resumed run reads it, and a fresh one every epoch. Each decision has its
own `stream` so that draws for different decisions are independent.

The hash is SplitMix64's finalizer chained over the four integers; its top 53 bits give a uniform in [0, 1).
"""
import numpy as np

_MASK = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, epoch: int, rows, stream: int) -> np.ndarray:
    """float64 [B] in [0, 1): one draw per entry of `rows` for decision `stream`."""
    h = np.full(np.shape(rows), 0x9E3779B97F4A7C15, np.uint64)
    with np.errstate(over="ignore"):
        for word in (seed, epoch, stream):
            h = _mix(h ^ np.uint64(word & _MASK))
        h = _mix(h ^ (np.asarray(rows, np.int64).astype(np.uint64)))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def choice(seed: int, epoch: int, rows, stream: int, n: int) -> np.ndarray:
    """int64 [B] in [0, n): one uniform pick per row."""
    return np.minimum((uniform(seed, epoch, rows, stream) * n).astype(np.int64), n - 1)
