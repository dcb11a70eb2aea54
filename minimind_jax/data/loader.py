"""Which rows each batch holds: a pure function of (seed, epoch, batch index, process), so resume is exact.

The epoch's order is a permutation drawn from (seed, epoch) alone. Global batch b is the entries
[b*B, (b+1)*B) of that permutation, wrapping to its start for the last partial batch (shapes never change and
every row is seen); process p of P reads the p-th contiguous slice of B/P rows of each global batch.
Resuming after n consumed batches is `start=n`: nothing before it is read and nothing after it changes.
"""
from typing import Iterator

import numpy as np


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """int64 [n]: the order of rows in `epoch`; the same (seed, epoch) gives the same order on every host."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch, ceil(n / batch_size): the last one is completed by wrapping around."""
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"num_batches: need rows and batch_size > 0, got n={n}, batch_size={batch_size}")
    return -(-n // batch_size)


def batch_rows(perm: np.ndarray, b: int, batch_size: int, process_index: int = 0,
               process_count: int = 1) -> np.ndarray:
    """int64 [batch_size / process_count]: this process's rows of global batch b."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} (the global batch) must divide by the {process_count} processes")
    width = batch_size // process_count
    pos = b * batch_size + process_index * width + np.arange(width)
    return perm[pos % len(perm)]


def iterate_batches(ds, batch_size: int, *, seed: int, epoch: int, start: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[tuple[int, dict]]:
    """(b, ds.batch(rows, epoch)) for the batches b = start, start+1, ... of one epoch (see the module doc); the
    epoch also keys the data set's own per-row draws, if it makes any."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} (the global batch) must divide by the {process_count} processes")
    perm = epoch_permutation(seed, epoch, len(ds))
    for b in range(start, num_batches(len(ds), batch_size)):
        yield b, ds.batch(batch_rows(perm, b, batch_size, process_index, process_count), epoch=epoch)
