"""Four devices give the losses of one: data parallel, FSDP and an expert axis, for pretrain, DPO and GRPO.

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

from tests.train.conftest import TINY, losses_of, train

SHAPES = {
    "pretrain": ["--batch_size", "8", "--accumulation_steps", "2", "--max_seq_len", "48", "--learning_rate", "1e-3",
                 "--max_steps", "4"],
    "dpo": ["--batch_size", "4", "--max_seq_len", "48", "--learning_rate", "1e-4", "--max_steps", "3"],
    "grpo": ["--batch_size", "4", "--max_seq_len", "48", "--max_gen_len", "12", "--num_generations", "2",
             "--learning_rate", "1e-4", "--max_steps", "2"],
    "moe": ["--use_moe", "1", "--batch_size", "8", "--accumulation_steps", "1", "--max_seq_len", "48",
            "--learning_rate", "1e-3", "--max_steps", "3"],
}
DATA = {"pretrain": "pretrain", "dpo": "dpo", "grpo": "rlaif", "moe": "pretrain"}
MESHES = {"pretrain": ["data=4", "data=2,fsdp=2"], "dpo": ["data=4", "data=2,fsdp=2"],
          "grpo": ["data=4", "data=2,fsdp=2"], "moe": ["fsdp=2,expert=2"]}
COMPARED = {"grpo": ["loss", "kl", "reward", "response_len"]}       # the rollouts must match, not just the loss
JOBS = [(case, mesh) for case, meshes in MESHES.items() for mesh in meshes]


def stage_of(case: str) -> str:
    return "pretrain" if case == "moe" else case


def flags(case: str, slices: dict, pretrained: Path) -> list[str]:
    start = ["--from_weight", str(pretrained / "full_sft_64")] if case in ("dpo", "grpo") else []
    return ["--data_path", str(slices[DATA[case]]), *start, *SHAPES[case]]


def layouts(state) -> dict[str, list]:
    """{path: [global shape, shape of this device's shard]} of every param and optimizer-state leaf."""
    leaves = jax.tree_util.tree_leaves_with_path({"params": state.params, "opt_state": state.opt_state})
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
        t0 = __import__("time").time()
        session = run_stage(args.stage, args)
        print("TIME", name, __import__("time").time() - t0, file=sys.stderr)
        report[name] = {"records": read(session.run.run_dir / "metrics.jsonl"), "layouts": layouts(session.state)}
    Path(report_path).write_text(json.dumps(report))


@pytest.fixture(scope="module")
def four(tmp_path_factory, sample_slices, pretrained) -> dict:
    """Every (case, mesh) job on four fake devices: {'pretrain data=4': {'records': [...], 'layouts': {...}}}."""
    d = tmp_path_factory.mktemp("four")
    jobs = {f"{case} {mesh}": (str(d / f"{case}_{i}"),
                               ["--stage", stage_of(case), *TINY, *flags(case, sample_slices, pretrained), "--mesh", mesh])
            for i, (case, mesh) in enumerate(JOBS)}
    (d / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-m", "tests.train.test_multidevice", str(d / "jobs.json"),
                        str(d / "report.json")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return json.loads((d / "report.json").read_text())


@pytest.fixture(scope="module")
def one(tmp_path_factory, sample_slices, pretrained):
    """case -> metrics records of the one-device run (this process), computed once per case."""
    assert jax.device_count() == 1, "the one-device references must run in a one-device process"
    cache = {}

    def records(case: str) -> list[dict]:
        if case not in cache:
            out = tmp_path_factory.mktemp(f"one_{case}")
            cache[case] = train(out, stage_of(case), *flags(case, sample_slices, pretrained))
        return cache[case]
    return records


@pytest.mark.parametrize("case,mesh", JOBS)
def test_four_devices_equal_one(four, one, case, mesh):
    got, want = four[f"{case} {mesh}"]["records"], one(case)
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(want) >= 2
    for key in COMPARED.get(case, ["loss"]):
        np.testing.assert_allclose(losses_of(got, key), losses_of(want, key), rtol=1e-5, atol=1e-5, err_msg=key)


def test_fsdp_splits_params_and_adam_moments(four):
    """On data=2,fsdp=2 the embedding [6400, 64] and both Adam moments are halved on each device; on data=4
    everything is whole; on fsdp=2,expert=2 each device holds half the experts, each of them halved again."""
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


if __name__ == "__main__":
    worker(*sys.argv[1:])
