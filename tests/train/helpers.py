"""Helpers for the trainer tests: tiny runs of the real CLI on small slices of the embedded sample."""
import itertools
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
