"""Data parallel over N devices gives the losses of one device (N fake CPU devices in a subprocess)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train.conftest import TINY, losses_of, train
from train.metrics import read


def run_on_devices(n: int, out, *flags) -> list[dict]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "train.run", "--out_dir", str(out), *TINY, *flags]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return read(next(out.glob("*/metrics.jsonl")))


@pytest.mark.parametrize("mesh", ["data=4", "data=2,fsdp=2"])
def test_pretrain_four_devices_equal_one(tmp_path, sample_slices, mesh):
    flags = ["--stage", "pretrain", "--data_path", str(sample_slices["pretrain"]), "--batch_size", "8",
             "--accumulation_steps", "2", "--max_seq_len", "48", "--learning_rate", "1e-3", "--max_steps", "4"]
    one = run_on_devices(1, tmp_path / "one", *flags)
    four = run_on_devices(4, tmp_path / "four", *flags, "--mesh", mesh)
    np.testing.assert_allclose(losses_of(four), losses_of(one), rtol=1e-5, atol=1e-5)
