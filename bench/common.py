"""What every benchmark shares: a matmul roofline timed in the same run, a profile by op, a table printer, a JSON
writer."""
import collections
import json
import os
import platform
import re
import resource
import subprocess
import tempfile
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


def op_kind(name: str) -> str:
    """The kind of an XLA:CPU thunk from its HLO instruction name (fusions are named after their root)."""
    for kind, keys in (("dot", ("ynn", "xnn", "onednn", "dot", "convolution")), ("scatter", ("scatter",)),
                       ("gather", ("gather",)), ("sort", ("sort",)), ("copy/transpose", ("copy", "transpose")),
                       ("dynamic-slice/update", ("dynamic",)), ("reduce", ("reduce",))):
        if any(k in name for k in keys):
            return kind
    return "elementwise/other"


def profile_ops(fn, *args, repeat: int = 2) -> dict[str, float]:
    """Seconds per call that each HLO instruction of the jitted fn runs, its own time (a while loop or a
    conditional minus what runs inside it), from jax.profiler, summed over the runtime's threads."""
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for _ in range(repeat):
            jax.block_until_ready(fn(*args))
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(str(next(Path(tmp).rglob("*.xplane.pb"))))
    own = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            stack = []                               # (end_ns, op) of the enclosing thunks
            for ev in sorted(line.events, key=lambda e: (e.start_ns, -e.duration_ns)):
                op = dict(ev.stats).get("hlo_op")
                if op is None:
                    continue
                while stack and stack[-1][0] <= ev.start_ns:
                    stack.pop()
                if stack:
                    own[stack[-1][1]] -= ev.duration_ns
                own[op] += ev.duration_ns
                stack.append((ev.end_ns, op))
    return {op: ns / 1e9 / repeat for op, ns in own.most_common()}


def op_sources(compiled_text: str) -> dict[str, str]:
    """Each HLO instruction's op_name metadata (the JAX source it came from) in a compiled module's text."""
    found = (re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]+)\"", line) for line in
             compiled_text.splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def profile_table(ops: dict[str, float], region_of) -> list[dict]:
    """Seconds per step by region (region_of(instruction name) -> str) and op kind: one row per region."""
    cells = collections.defaultdict(collections.Counter)
    for op, seconds in ops.items():
        cells[region_of(op)][op_kind(op)] += seconds
    rows = [{"region": r, "total_s": round(sum(c.values()), 3), **{k: round(v, 3) for k, v in c.most_common()}}
            for r, c in cells.items()]
    return sorted(rows, key=lambda r: -r["total_s"])


class StepWorker:
    """A train step kept warm in a process of its own. `cmd` prints one JSON line of facts when ready, then answers
    each request line on stdin with one JSON line: `n` -> {"steps_s": [n step times]}; its own requests too
    (bench.train's `profile`). One process per step: each has its own memory (two MoE steps and the reference
    do not fit one process here) and its own thread pool, and only one runs at a time."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{' '.join(cmd)} exited with {self.proc.wait()} before it was ready")
        self.info = json.loads(line)

    def ask(self, request: str) -> dict:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def steps(self, n: int) -> list[float]:
        return self.ask(str(n))["steps_s"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


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


def cpu() -> str:
    """The host CPU's model and its matmul extensions (ratios against the reference move with both: the same
    command gave 1.09x on one 2-core machine and 1.54x on another)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(map(str.strip, line.split(":", 1)) for line in info.splitlines() if ":" in line)  # alike per core
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return f"{fields.get('model name', '')} ({os.cpu_count()} cores; {' '.join(f for f in wanted if f in flags)})"


def environment() -> dict:
    return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(), "cpu": cpu(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
