"""Which rows each batch holds: a pure function of (seed, epoch, batch index), so resume is exact.

The epoch's order is a permutation drawn from (seed, epoch) alone. Global batch b is the entries
[b*B, (b+1)*B) of that permutation, wrapping to its start for the last partial batch (shapes never change and
every row is seen). A process of a multi-process run reads some positions of every global batch: which ones is the
caller's to say (the trainer derives them from how the batch is sharded over the devices, train.mesh.process_rows),
so there is one rule for the rows and one for their placement. Resuming after n consumed batches is `start=n`:
nothing before it is read and nothing after it changes.
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


def batch_rows(perm: np.ndarray, b: int, batch_size: int) -> np.ndarray:
    """int64 [batch_size]: the data-set rows of global batch b, consecutive entries of the permutation."""
    return perm[(b * batch_size + np.arange(batch_size)) % len(perm)]


def iterate_batches(ds, batch_size: int, *, seed: int, epoch: int, start: int = 0,
                    positions: np.ndarray | None = None) -> Iterator[tuple[int, dict]]:
    """(b, ds.batch(rows, epoch)) for the batches b = start, start+1, ... of one epoch (see the module doc).

    `positions` (int [k], within [0, batch_size)): the entries of each global batch this process reads; None: all.
    The epoch also keys the data set's own per-row draws, if it makes any."""
    if positions is not None and (np.min(positions) < 0 or np.max(positions) >= batch_size):
        raise ValueError(f"positions must lie in [0, {batch_size}), the global batch")
    perm = epoch_permutation(seed, epoch, len(ds))
    for b in range(start, num_batches(len(ds), batch_size)):
        rows = batch_rows(perm, b, batch_size)
        yield b, ds.batch(rows if positions is None else rows[positions], epoch=epoch)
