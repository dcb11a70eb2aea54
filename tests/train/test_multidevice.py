"""Four devices give the losses of one: data parallel, FSDP and an expert axis, for pretrain, DPO, GRPO and
SPO as its paper defines it (whose per-prompt table is split by prompt over the devices).

The four devices are fake CPU devices (`--xla_force_host_platform_device_count=4`) in one subprocess, which runs
every four-device job in turn (`python -m tests.train.test_multidevice JOBS REPORT`, one JAX start-up for all);
the one-device references run here. GRPO also checks the rollouts: the sampling key depends only on (seed,
step), so the same completions (rewards, lengths) must come out when the prompts are split over four devices.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.train.helpers import TINY, losses_of, train
from train.mesh import make_mesh, parse_mesh, process_rows

SHAPES = {
    "pretrain": ["--batch_size", "8", "--accumulation_steps", "2", "--max_seq_len", "48", "--learning_rate", "1e-3",
                 "--epochs", "2", "--max_steps", "4"],
    "dpo": ["--batch_size", "4", "--max_seq_len", "48", "--learning_rate", "1e-3", "--max_steps", "3"],
    "grpo": ["--batch_size", "4", "--max_seq_len", "48", "--max_gen_len", "12", "--num_generations", "2",
             "--learning_rate", "1e-3", "--max_steps", "2", "--reward_fn", f"{Path(__file__)}:text_length_reward"],
    "moe": ["--use_moe", "1", "--num_hidden_layers", "1", "--batch_size", "8", "--accumulation_steps", "1",
            "--max_seq_len", "48", "--learning_rate", "1e-3", "--max_steps", "3"],
    "spo_paper": ["--spo_mode", "paper", "--spo_init_samples", "1", "--reasoning", "0", "--answer_reward", "0",
                  "--reward_fn", f"{Path(__file__).parent / 'test_spo_paper.py'}:parity_reward", "--batch_size", "4",
                  "--accumulation_steps", "1", "--max_seq_len", "48", "--max_gen_len", "12", "--learning_rate", "1e-3",
                  "--epochs", "2", "--max_steps", "4"],
}
DATA = {"pretrain": "pretrain", "dpo": "dpo", "grpo": "rlaif", "moe": "pretrain", "spo_paper": "rlaif"}
MESHES = {"pretrain": ["data=4", "data=2,fsdp=2"], "dpo": ["data=4", "data=2,fsdp=2"],
          "grpo": ["data=4", "data=2,fsdp=2"], "moe": ["fsdp=2,expert=2"], "spo_paper": ["data=4"]}
JOBS = [(case, mesh) for case, meshes in MESHES.items() for mesh in meshes]


def text_length_reward(prompts, responses, answers):
    """A reward that tells completions apart, so GRPO's advantages (and its update) are not all zero."""
    return np.array([len(r) / 10 for r in responses], np.float32)


def stage_of(case: str) -> str:
    return {"moe": "pretrain", "spo_paper": "spo"}.get(case, case)


def flags(case: str, slices: dict, pretrained: Path) -> list[str]:
    start = ["--from_weight", str(pretrained / "full_sft_64")] if case in ("dpo", "grpo", "spo_paper") else []
    return ["--data_path", str(slices[DATA[case]]), *start, *SHAPES[case]]


def layouts(state) -> dict[str, list]:
    """{path: [global shape, shape of this device's shard]} of every param, optimizer-state and extra leaf."""
    leaves = jax.tree_util.tree_leaves_with_path({"params": state.params, "opt_state": state.opt_state,
                                                  "extra": state.extra})
    return {jax.tree_util.keystr(p): [list(x.shape), list(x.addressable_shards[0].data.shape)] for p, x in leaves}


def worker(jobs_path: str, report_path: str) -> None:
    """In the four-device subprocess: run each job through the CLI's own path, report its metrics and layouts."""
    from train.args import parser
    from train.metrics import read
    from train.run import run_stage
    assert jax.device_count() == 4, jax.devices()
    report = {}
    for name, (out, argv) in json.loads(Path(jobs_path).read_text()).items():
        args = parser().parse_args(["--out_dir", out, *argv])
        session = run_stage(args)
        report[name] = {"records": read(session.run.run_dir / "metrics.jsonl"), "layouts": layouts(session.state)}
    Path(report_path).write_text(json.dumps(report))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_slices, pretrained) -> tuple[dict, dict]:
    """(four, one): every (case, mesh) job on four fake devices, {'pretrain data=4': {'records', 'layouts'}}, and
    the one-device records of every case, {'pretrain': [...]}, computed here while the subprocess runs."""
    assert jax.device_count() == 1, "the one-device references must run in a one-device process"
    d = tmp_path_factory.mktemp("four")
    jobs = {f"{case} {mesh}": (str(d / f"{case}_{i}"),
                               ["--stage", stage_of(case), *TINY, *flags(case, sample_slices, pretrained), "--mesh", mesh])
            for i, (case, mesh) in enumerate(JOBS)}
    (d / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    log = d / "four.log"
    proc = subprocess.Popen([sys.executable, "-m", "tests.train.test_multidevice", str(d / "jobs.json"),
                             str(d / "report.json")], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        one = {case: train(tmp_path_factory.mktemp(f"one_{case}"), stage_of(case), *flags(case, sample_slices, pretrained))
               for case in MESHES}
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()[-4000:]
    return json.loads((d / "report.json").read_text()), one


@pytest.mark.parametrize("case,mesh", JOBS)
def test_four_devices_equal_one(runs, case, mesh):
    four, one = runs
    got, want = four[f"{case} {mesh}"]["records"], one[case]
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(want) >= 2
    keys = [k for k in want[0] if k != "time" and not k.endswith("_s")                # every metric but the timings
            and isinstance(want[0][k], (int, float))]                                   # and the sample's text
    assert "loss" in keys and (case != "grpo" or {"reward", "kl", "response_len"} <= set(keys)), keys
    for key in keys:
        np.testing.assert_allclose(losses_of(got, key), losses_of(want, key), rtol=1e-5, atol=1e-5, err_msg=key)
    if case == "grpo":      # step 1 updated the policy (advantages not all zero), so step 2's KL is not trivially 0
        assert want[-1]["kl"] > 1e-6, want


def test_fsdp_splits_params_and_adam_moments(runs):
    """On data=2,fsdp=2 the embedding [6400, 64] and both Adam moments are halved on each device; on data=4
    everything is whole; on fsdp=2,expert=2 each device holds half the experts, each of them halved again."""
    four, _ = runs
    split = four["pretrain data=2,fsdp=2"]["layouts"]
    embed = [k for k in split if k.endswith("['embed_tokens']")]
    assert len(embed) == 3, embed                                   # the param, Adam's mu and nu
    for k in embed:
        assert split[k] == [[6400, 64], [3200, 64]], (k, split[k])
    assert all(shape == shard for shape, shard in four["pretrain data=4"]["layouts"].values())

    moe = four["moe fsdp=2,expert=2"]["layouts"]
    experts = [k for k in moe if "['experts']" in k]
    assert experts and len(experts) % 3 == 0                        # gate/up/down per layer, x (param, mu, nu)
    for k in experts:
        (E, *rest), (e, *part) = moe[k]
        assert e == E // 2 and np.prod(part) == np.prod(rest) // 2, (k, moe[k])


def test_spo_paper_table_is_split_by_prompt(runs):
    """The 16-prompt table: each of the four devices holds 4 prompts' trackers and stored responses."""
    four, _ = runs
    table = {k: v for k, v in four["spo_paper data=4"]["layouts"].items() if "['table']" in k}
    assert len(table) == 6, table
    for k, ((n, *rest), (part, *part_rest)) in table.items():
        assert n == 16 and part == 4 and rest == part_rest, (k, table[k])


def test_mesh_flag_and_one_process_rows():
    """`--mesh` sizes (one may be -1; `data` takes what is left unless another axis does); one process feeds all rows."""
    assert parse_mesh("fsdp=-1", 4) == {"data": 1, "fsdp": 4}
    assert parse_mesh("expert=2", 4) == {"data": 2, "fsdp": 1, "expert": 2}
    with pytest.raises(ValueError, match="only one axis"):
        parse_mesh("data=-1,fsdp=-1", 4)
    np.testing.assert_array_equal(process_rows(make_mesh(), 8), np.arange(8))


if __name__ == "__main__":
    worker(*sys.argv[1:])
