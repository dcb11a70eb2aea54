"""Two processes on 127.0.0.1 (JAX's own runtime, gloo CPU collectives) train like one, and what they checkpoint
resumes in one process.

The mesh is `fsdp=2` over one device per process, the hardest layout for the plumbing: every batch is split
across the processes, the embedding and its Adam moments are split across them too, so the checkpoint holds one
shard per process and the exported weights must be gathered first.
"""
import sys

import numpy as np
from safetensors.numpy import load_file

from tests.train.helpers import TINY, losses_of, train, two_processes
from train.distributed import initialize, launcher
from train.metrics import read

FLAGS = ["--batch_size", "8", "--accumulation_steps", "2", "--max_seq_len", "48", "--learning_rate", "1e-3",
         "--epochs", "3"]          # 32 rows: 2 steps per epoch, 6 in all
TIMEOUT_S = 240


def run_cli(out, *flags):
    """The argv of process `i` of a two-process `python -m train.run --stage pretrain`."""
    return lambda address, i: [sys.executable, "-m", "train.run", "--stage", "pretrain", "--out_dir", str(out), *TINY,
                               *flags, "--coordinator_address", address, "--num_processes", "2", "--process_id", str(i)]


def test_two_processes_train_like_one_and_resume_in_one(tmp_path, sample_slices):
    flags = ["--data_path", str(sample_slices["pretrain"]), *FLAGS]
    two = tmp_path / "two"
    with two_processes(two, run_cli(two, *flags, "--mesh", "fsdp=2", "--max_steps", "4"), TIMEOUT_S):
        one = train(tmp_path / "one", "pretrain", *flags, "--max_steps", "4")   # meanwhile: the reference
    pair = read(two / "pretrain_64" / "metrics.jsonl")            # written by process 0 only
    assert [r["step"] for r in pair] == [1, 2, 3, 4]
    np.testing.assert_allclose(losses_of(pair), losses_of(one), rtol=1e-5, atol=1e-5)

    # exported from params split across the processes: gathered, equal to the one-process export
    w_two, w_one = (load_file(d / "pretrain_64" / "weights.safetensors") for d in (two, tmp_path / "one"))
    assert w_two.keys() == w_one.keys()
    for k in w_one:
        np.testing.assert_allclose(w_two[k].astype(np.float32), w_one[k].astype(np.float32), rtol=2e-3, atol=1e-5,
                                   err_msg=k)   # fp16: one ulp is ~1e-3 relative

    # both processes' checkpoint shards restore, resharded onto one device, and the data position carries over
    resumed = train(two, "pretrain", *flags, "--max_steps", "6", "--from_resume", "1")
    one_rest = train(tmp_path / "one", "pretrain", *flags, "--max_steps", "6", "--from_resume", "1")
    assert resumed[:4] == pair      # it restored step 4: the two-process run's records were kept, not rewritten
    assert [r["step"] for r in resumed] == list(range(1, 7))
    np.testing.assert_allclose(losses_of(resumed), losses_of(one_rest), rtol=1e-5, atol=1e-5)


def test_single_process_needs_no_runtime(monkeypatch):
    """With no flags and no launcher in the environment, nothing is initialised (a plain laptop run)."""
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri", "TPU_PROCESS_ADDRESSES",
                "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert launcher() is None and initialize() is False
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert launcher() is None                                      # one task: nothing to join
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert launcher() == "SLURM"
    monkeypatch.delenv("SLURM_STEP_NODELIST")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-0,t1k-1")
    assert launcher() == "TPU slice"
