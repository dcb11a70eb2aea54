"""Tiny runs on small slices of the embedded sample: every stage's test trains a `tiny` model for a few steps."""
import itertools
import json
from pathlib import Path

import pytest

from minimind_jax.data import SAMPLE_DIR
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


@pytest.fixture(scope="session")
def sample_slices(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sample")
    files = {"pretrain": 32, "sft": 32, "lora_identity": 16, "dpo": 16, "reason": 16, "rlaif": 16}
    return {name: head(SAMPLE_DIR / f"{name}.jsonl", d / f"{name}.jsonl", n) for name, n in files.items()}


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, sample_slices) -> Path:
    """An out_dir holding a tiny `pretrain` and `full_sft` model, the starting point of the later stages."""
    out = tmp_path_factory.mktemp("out")
    train(out, "pretrain", "--data_path", str(sample_slices["pretrain"]), "--batch_size", "8",
          "--accumulation_steps", "1", "--max_seq_len", "64", "--learning_rate", "3e-3", "--epochs", "2")
    train(out, "full_sft", "--data_path", str(sample_slices["sft"]), "--batch_size", "8", "--max_seq_len", "64",
          "--learning_rate", "3e-3", "--epochs", "1")
    return out
