"""Resume is exact: a run stopped after k steps and resumed gives the losses of a run that never stopped —
also when the process is killed with SIGKILL right after a checkpoint."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train.helpers import TINY, losses_of, train

SHAPE = ["--batch_size", "4", "--max_seq_len", "48", "--epochs", "3"]


def stage_flags(name, slices):
    return {
        "pretrain": ["--data_path", str(slices["pretrain"]), "--accumulation_steps", "2", "--learning_rate", "1e-3"],
        "lora": ["--data_path", str(slices["lora_identity"]), "--from_weight", "full_sft", "--learning_rate", "1e-2"],
        "dpo": ["--data_path", str(slices["dpo"]), "--from_weight", "full_sft", "--learning_rate", "1e-4"],
    }[name]


@pytest.mark.parametrize("stage", ["pretrain", "lora", "dpo"])
def test_stop_and_resume_equals_uninterrupted(tmp_path, pretrained, sample_slices, stage):
    flags = [*SHAPE, *stage_flags(stage, sample_slices)]
    whole_out, split_out = tmp_path / "whole", tmp_path / "split"
    shutil.copytree(pretrained, whole_out)
    shutil.copytree(pretrained, split_out)
    whole = train(whole_out, stage, *flags, "--max_steps", "8")
    first = train(split_out, stage, *flags, "--max_steps", "4", "--save_interval", "2")
    resumed = train(split_out, stage, *flags, "--max_steps", "8", "--from_resume", "1")
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert [r["step"] for r in resumed] == list(range(1, 9))     # metrics.jsonl reads as one run
    np.testing.assert_allclose(losses_of(resumed), losses_of(whole), rtol=0, atol=1e-6)


def test_sigkill_then_resume_is_exact(tmp_path, pretrained, sample_slices):
    """Same schedule on both sides: kill a run of 8 steps after its step-2 checkpoint, resume it to 8."""
    flags = [*SHAPE, *stage_flags("pretrain", sample_slices)]
    whole = train(tmp_path / "whole", "pretrain", *flags, "--max_steps", "8")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train.run", "--stage", "pretrain", "--out_dir", str(out), *TINY, *flags,
           "--max_steps", "8", "--save_interval", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "pretrain_64" / "checkpoints"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (ckpt / "2").exists():
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert (ckpt / "2").exists()
    resumed = train(out, "pretrain", *flags, "--max_steps", "8", "--from_resume", "1")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    np.testing.assert_allclose(losses_of(resumed), losses_of(whole), rtol=0, atol=1e-6)
