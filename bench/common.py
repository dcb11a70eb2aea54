"""What every benchmark shares: a matmul roofline timed in the same run, a table printer, a JSON writer."""
import json
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp


def timeit(fn, *args, warmup: int = 1, repeat: int = 5) -> float:
    """Best wall-clock seconds of fn(*args), blocking on the result; the first `warmup` calls compile."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_roofline(dtype=jnp.float32, n: int = 2048) -> float:
    """FLOP/s of a large jitted matmul: the practical peak that MFU is measured against.

    bf16 inputs accumulate in f32 (`preferred_element_type`), the fast path of XLA:CPU.
    """
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / timeit(mm, a, b)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_seconds(jitted, *args) -> float:
    """Seconds to lower and compile `jitted` for these arguments (nothing is executed)."""
    t0 = time.perf_counter()
    jitted.lower(*args).compile()
    return time.perf_counter() - t0


def print_table(rows: list[dict], title: str = "") -> None:
    """One aligned table; columns are the union of the rows' keys in first-seen order."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:,.3g}" if isinstance(v, float) and abs(v) < 1000 else (f"{v:,.0f}" if isinstance(v, float) else str(v))
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))
    print(f"wrote {path}")


def environment() -> dict:
    return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
