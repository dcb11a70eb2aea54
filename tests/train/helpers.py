"""Helpers for the trainer tests: tiny runs of the real CLI on small slices of the embedded sample."""
import contextlib
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

from train.metrics import read
from train.run import main

TINY = ["--preset", "tiny", "--dtype", "float32", "--log_interval", "1", "--save_interval", "1000"]


def head(src: Path, dst: Path, n: int) -> Path:
    """The first n rows of a sample file: small enough that a few epochs show the loss falling."""
    with src.open() as f:
        dst.write_text("".join(itertools.islice(f, n)))
    return dst


def train(out: Path, stage: str, *flags: str) -> list[dict]:
    """Run a stage in-process (compiled programs are reused across tests) and return its metrics records."""
    main(["--stage", stage, "--out_dir", str(out), *TINY, *flags])
    run_dirs = sorted(out.glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    return read(run_dirs[-1])


def losses_of(records: list[dict], key: str = "loss") -> list[float]:
    return [r[key] for r in records]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def two_processes(out: Path, command, timeout_s: float = 240):
    """`command(address, process_id)` (an argv) started twice, as process 0 and 1 of one JAX runtime on
    127.0.0.1 with one CPU device each, while the body runs here; both are killed if either fails or hangs."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    address = f"127.0.0.1:{free_port()}"
    out.mkdir(parents=True, exist_ok=True)
    logs = [out / f"process_{i}.log" for i in range(2)]
    procs = [subprocess.Popen(command(address, i), env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
             for i, log in enumerate(logs)]
    try:
        yield
        codes = [p.wait(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0], "\n".join(f"--- process {i} ---\n{log.read_text()[-3000:]}" for i, log in enumerate(logs))
