"""Which rows an optimizer step reads: a pure function of (permutation, step), so resume is exact."""
import numpy as np

from minimind_jax.data import batch_rows


def step_rows(perm: np.ndarray, step_in_epoch: int, accumulation: int, batch: int) -> np.ndarray:
    """Data-set rows of one optimizer step, [A, B]: its global batch of A*B rows (the data library's rule), one
    micro-batch per row. Each process then feeds its columns (train.mesh.process_rows)."""
    return batch_rows(perm, step_in_epoch, accumulation * batch).reshape(accumulation, batch)


def split_batch(batch: dict, shape: tuple[int, int]) -> tuple[dict, dict]:
    """numpy arrays reshaped to [A, B_local, ...] for the device; everything else (strings) kept for the host."""
    arrays = {k: v.reshape(*shape, *v.shape[1:]) for k, v in batch.items() if isinstance(v, np.ndarray)}
    host = {k: v for k, v in batch.items() if not isinstance(v, np.ndarray)}
    return arrays, host


class Rows:
    """A fixed subset of a data set's rows (a training or held-out split) with the data set's interface."""

    def __init__(self, dataset, rows: np.ndarray):
        self.dataset, self.rows = dataset, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fingerprint(self) -> str:
        return f"{self.dataset.fingerprint}:{len(self.rows)}"

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict:
        return self.dataset.batch(self.rows[np.asarray(indices)], epoch=epoch)


def held_out_split(n: int, every: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): every `every`-th row is held out — stable as the file grows at its end."""
    rows = np.arange(n)
    held = rows % every == every - 1
    return rows[~held], rows[held]
