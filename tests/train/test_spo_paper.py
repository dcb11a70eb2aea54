"""`--stage spo --spo_mode paper` (issue 6) on the tiny model: it runs and logs the per-prompt trackers and the
prioritised sampling, its table is initialised from offline samples, checkpointed, and restored exactly, and a
prompt it never visited keeps its prior. The math itself is tested in tests/losses/test_spo_paper.py (including
where the paper and minimind modes agree)."""
import shutil

import jax
import numpy as np

from tests.train.conftest import TINY, train
from train import stages
from train.args import parser, with_defaults
from train.engine import setup

N_INIT = 2
PAPER = ["--spo_mode", "paper", "--spo_init_samples", str(N_INIT), "--spo_rho_min", "0.875", "--reasoning", "0",
         "--answer_reward", "0", "--reward_fn", "tests.train.test_spo_paper:parity_reward", "--batch_size", "2", "--accumulation_steps", "2", "--max_seq_len", "48",
         "--max_gen_len", "12", "--learning_rate", "1e-3", "--from_weight", "full_sft", "--epochs", "3"]
N0 = 1 / (1 - 0.875)


def parity_reward(prompts, responses, answers):
    """A binary reward the tiny model earns about half the time (it rarely gets an answer right): successes vary
    across prompts and samples, so priors, advantages and trackers are not all alike."""
    return np.array([len(r) % 2 for r in responses], np.float32)


def table_of(out, *flags):
    """The SPO table a session over `out` starts with: the prior (fresh) or the last checkpoint's (--from_resume 1)."""
    stage = stages.get("spo")
    args = parser().parse_args(["--stage", "spo", "--out_dir", str(out), *TINY, *flags])
    session = setup(stage, with_defaults(args, {**stage.defaults, "stage": "spo"}))
    return jax.tree.map(np.asarray, jax.device_get(session.state.extra["table"]))


def test_paper_mode_runs_logs_and_keeps_unvisited_priors(tmp_path, pretrained, sample_slices):
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    flags = ["--data_path", str(sample_slices["rlaif"]), *PAPER, "--max_steps", "6"]
    prior = table_of(out, *flags)
    rec = train(out, "spo", *flags)
    table = table_of(out, *flags, "--from_resume", "1")

    # the prior: N0 pseudo-samples of smoothed success rate, s of n = 2 completions succeeded
    N = len(prior.alpha)
    assert N == 16 and prior.response.shape == (N, 12) and not prior.visits.any()
    np.testing.assert_allclose(prior.alpha + prior.beta, N0, rtol=1e-6)
    s = prior.alpha * (N_INIT + 1) / N0 - 0.5
    np.testing.assert_allclose(s, np.round(s), atol=1e-5)
    assert np.all((0 <= np.round(s)) & (np.round(s) <= N_INIT)) and len(np.unique(s)) > 1

    # logs: trackers, drift on revisits, sampling
    assert [r["step"] for r in rec] == list(range(1, 7))
    for r in rec:
        assert 0 < r["baseline"] < 1 and 0.875 - 1e-6 <= r["rho"] <= 0.96 + 1e-6
        assert 0 < r["sample_unique"] <= 1 and r["sample_weight_ratio"] >= 1 and 0 <= r["revisit_frac"] <= 1
        for key in ("loss", "reward", "kl", "clip_frac", "approx_kl", "ratio_mean", "response_len"):
            assert np.isfinite(r[key]), key
        assert abs(r["ratio_mean"] - 1) < 1e-4          # one update per rollout: the old policy is the policy
    assert rec[0]["revisit_frac"] == 0 and rec[0]["rho"] == np.float32(0.96)
    assert all((r["grad_norm"] > 0) == (r["advantage_std"] > 0) for r in rec)   # an all-equal batch teaches nothing
    assert sum(r["grad_norm"] > 0 for r in rec) >= 3
    revisits = [r for r in rec if r["revisit_frac"] > 0]
    assert revisits and all(r["drift"] > 0 for r in revisits)      # the policy moved between visits

    # the checkpointed table: every row of the 6 steps counted, unvisited prompts exactly as initialised
    assert table.visits.sum() == 6 * 2 * 2
    seen = table.visits > 0
    assert 0 < seen.sum() < N
    for got, want in zip(table, prior):
        np.testing.assert_array_equal(got[~seen], want[~seen])
    assert np.all(table.response_len[seen] > 0)
    assert not np.allclose(table.alpha[seen] + table.beta[seen], N0)   # visited: forgot, then counted a reward


def test_paper_mode_resumes_exactly(tmp_path, pretrained, sample_slices):
    """Stopped at step 3 and resumed: the same resampled prompts, losses, trackers and final table as one run."""
    flags = ["--data_path", str(sample_slices["rlaif"]), *PAPER]
    whole_out, split_out = tmp_path / "whole", tmp_path / "split"
    shutil.copytree(pretrained, whole_out)
    shutil.copytree(pretrained, split_out)
    whole = train(whole_out, "spo", *flags, "--max_steps", "6")
    train(split_out, "spo", *flags, "--max_steps", "3")
    resumed = train(split_out, "spo", *flags, "--max_steps", "6", "--from_resume", "1")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == list(range(1, 7))
    for key in ("loss", "baseline", "rho", "drift", "reward", "sample_unique", "sample_weight_ratio"):
        np.testing.assert_allclose([r[key] for r in resumed[3:]], [r[key] for r in whole[3:]], rtol=0, atol=1e-6,
                                   err_msg=key)
    tables = [table_of(out, *flags, "--max_steps", "6", "--from_resume", "1") for out in (whole_out, split_out)]
    for got, want in zip(*tables):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
