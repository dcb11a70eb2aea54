"""Fixtures of the trainer tests: slices of the embedded sample, and a tiny pretrained model to start stages from."""
import shutil
from pathlib import Path

import pytest

from minimind_jax.data import SAMPLE_DIR
from tests.train.helpers import head, train


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
    for ckpt in out.glob("*/checkpoints"):      # the later stages start from the weights; a rerun starts afresh
        shutil.rmtree(ckpt)
    return out
