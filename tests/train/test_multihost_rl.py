"""Two processes on 127.0.0.1 run the RL stages like one process: the same completions (a rollout's sampling key is
its global position in the step), the same rewards, advantages, losses and logged metrics, with the batch split
across the processes and, with `--mesh fsdp=2`, the params (actor, critic, reference) too. SPO-paper's per-prompt
table is split by prompt across them, and what the two processes checkpoint resumes in one, exactly.

Both processes run every job in turn (`python -m tests.train.test_multihost_rl JOBS ADDRESS PROCESS_ID`), one JAX
start-up for all; the one-process references run here meanwhile.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.train.helpers import TINY, losses_of, train, two_processes
from train.metrics import read

HERE = Path(__file__).parent
LENGTH = ["--reward_fn", f"{HERE / 'test_multidevice.py'}:text_length_reward"]
PARITY = ["--reward_fn", f"{HERE / 'test_spo_paper.py'}:parity_reward", "--reasoning", "0", "--answer_reward", "0"]
RL = ["--max_seq_len", "48", "--max_gen_len", "12", "--learning_rate", "1e-3"]
SHAPES = {
    "grpo": ["--batch_size", "4", "--num_generations", "2", "--max_steps", "2", *LENGTH, *RL],
    "spo": ["--batch_size", "2", "--accumulation_steps", "2", "--max_steps", "2", *LENGTH, *RL],
    "spo_paper": ["--spo_init_samples", "1", "--batch_size", "4", "--accumulation_steps", "1", "--epochs", "2",
                  "--max_steps", "2", *PARITY, *RL],
    "ppo": ["--batch_size", "4", "--critic_learning_rate", "1e-3", "--max_steps", "2", *LENGTH, *RL],
}
MESHES = {"grpo": ["fsdp=2", "data=2"], "spo": ["fsdp=2"], "spo_paper": ["fsdp=2", "data=2"], "ppo": ["fsdp=2"]}
JOBS = [(stage, mesh) for stage, meshes in MESHES.items() for mesh in meshes]
TIMEOUT_S = 600


def argv(stage: str, slices: dict, pretrained: Path, *extra: str) -> list[str]:
    return ["--stage", stage, *TINY, "--data_path", str(slices["rlaif"]), "--from_weight",
            str(pretrained / "full_sft_64"), *SHAPES[stage], *extra]


def worker(jobs_path: str, address: str, process_id: str) -> None:
    """In each of the two processes: join the runtime, then run every job through the CLI's own path."""
    from train.args import parser
    from train.distributed import initialize
    from train.run import run_stage
    initialize(address, 2, int(process_id))
    for job in json.loads(Path(jobs_path).read_text()):
        run_stage(parser().parse_args(job))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_slices, pretrained) -> tuple[Path, dict]:
    """(two, one): every (stage, mesh) job on two processes under two/<stage>_<mesh>; the one-process
    records of every stage (2 steps, and spo_paper's 4, the resume test's reference), computed here meanwhile."""
    two = tmp_path_factory.mktemp("two")
    jobs = [["--out_dir", str(two / f"{stage}_{mesh}"), *argv(stage, sample_slices, pretrained, "--mesh", mesh)]
            for stage, mesh in JOBS]
    (two / "jobs.json").write_text(json.dumps(jobs))
    command = lambda address, i: [sys.executable, "-m", "tests.train.test_multihost_rl", str(two / "jobs.json"),
                                  address, str(i)]
    with two_processes(two, command, TIMEOUT_S):
        one = {stage: train(tmp_path_factory.mktemp(f"one_{stage}"), stage, *argv(stage, sample_slices, pretrained))
               for stage in MESHES}
        one["spo_paper 4"] = train(tmp_path_factory.mktemp("one_spo_paper_4"), "spo_paper",
                                   *argv("spo_paper", sample_slices, pretrained, "--max_steps", "4"))
    return two, one


def compared(records: list[dict]) -> list[str]:
    """Every logged number but the timings and the printed sample's reward (process 0's first row)."""
    return [k for k in records[0] if k not in ("time", "tokens_per_s", "sample_reward") and not k.endswith("_s")
            and isinstance(records[0][k], (int, float))]


@pytest.mark.parametrize("stage,mesh", JOBS)
def test_two_processes_equal_one(runs, stage, mesh):
    two, one = runs
    got, want = read(next((two / f"{stage}_{mesh}").glob("*/metrics.jsonl"))), one[stage]
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    keys = compared(want)
    assert {"loss", "reward", "response_len", "completion_tokens"} <= set(keys), keys
    for key in keys:
        np.testing.assert_allclose(losses_of(got, key), losses_of(want, key), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{stage} {mesh}: {key}")
    assert len({r["reward"] for r in want}) > 1 or want[0]["loss"] != 0     # the rewards told rollouts apart


def test_spo_paper_table_written_by_two_processes_resumes_in_one(runs, sample_slices, pretrained):
    """The table split by prompt over the two processes (fsdp=2) is restored whole onto one device, and steps 3-4
    continue exactly as an unbroken one-process run."""
    two, one = runs
    out = two / "spo_paper_fsdp=2"
    resumed = train(out, "spo_paper", *argv("spo_paper", sample_slices, pretrained, "--max_steps", "4",
                                            "--from_resume", "1"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in compared(one["spo_paper 4"]):
        np.testing.assert_allclose(losses_of(resumed, key), losses_of(one["spo_paper 4"], key), rtol=1e-5,
                                   atol=1e-5, err_msg=key)


if __name__ == "__main__":
    worker(*sys.argv[1:])
