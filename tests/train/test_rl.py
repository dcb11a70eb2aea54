"""RL stages on the tiny model: they run on the embedded prompts, log what the issue asks for, and resume exactly."""
import shutil

import numpy as np
import pytest

from tests.train.helpers import head, losses_of, train

RL = ["--batch_size", "2", "--max_seq_len", "48", "--max_gen_len", "12", "--learning_rate", "1e-4",
      "--from_weight", "full_sft"]


@pytest.mark.parametrize("stage,extra", [("grpo", ["--num_generations", "4"]), ("spo", ["--accumulation_steps", "2"]),
                                         ("ppo", ["--critic_learning_rate", "1e-4"])])
def test_rl_stage_runs_and_logs(tmp_path, pretrained, sample_slices, stage, extra):
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    rec = train(out, stage, "--data_path", str(sample_slices["rlaif"]), *RL, *extra, "--max_steps", "3")
    assert [r["step"] for r in rec] == [1, 2, 3]
    for key in ("loss", "reward", "kl" if stage != "ppo" else "kl_ref", "response_len", "rollout_s", "reward_s",
                "update_s"):
        assert key in rec[-1] and np.isfinite(rec[-1][key]), key
    if stage == "spo":
        assert 0 < rec[-1]["baseline"] < 1 and 0.5 <= rec[-1]["rho"] <= 0.96
    if stage == "ppo":
        assert 0 <= rec[-1]["clip_frac"] <= 1


def test_spo_resume_restores_tracker_and_losses(tmp_path, pretrained, sample_slices):
    flags = ["--data_path", str(sample_slices["rlaif"]), *RL, "--accumulation_steps", "2", "--epochs", "2"]
    whole_out, split_out = tmp_path / "whole", tmp_path / "split"
    shutil.copytree(pretrained, whole_out)
    shutil.copytree(pretrained, split_out)
    whole = train(whole_out, "spo", *flags, "--max_steps", "6")
    train(split_out, "spo", *flags, "--max_steps", "3", "--save_interval", "3")
    resumed = train(split_out, "spo", *flags, "--max_steps", "6", "--from_resume", "1")
    for key in ("loss", "baseline", "rho", "reward"):
        np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in whole], rtol=0, atol=1e-6)


def test_ppo_old_actor_refresh(tmp_path, pretrained, sample_slices):
    """Right after a refresh the old actor equals the actor: the ratio is exactly 1 on the next rollout."""
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    rec = train(out, "ppo", "--data_path", str(sample_slices["rlaif"]), *RL, "--update_old_actor_freq", "2",
                "--max_steps", "4", "--critic_learning_rate", "1e-4")
    assert rec[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-5)          # step 1: old actor = initial actor
    assert rec[2]["ratio_mean"] == pytest.approx(1.0, abs=1e-5)          # step 3: refreshed after step 2


def test_minimind3_ppo_logs_the_rate_of_its_last_update(tmp_path):
    """MiniMind-3's PPO updates once per minibatch of every pass (here 2 passes x 2 minibatches per rollout), so
    the rate a step logs is the cosine's at the count of updates made so far, not at the rollout step; an early
    stop (here: past an approx KL of 1e-6, so after each rollout's first update) holds the count back."""
    import math

    from minimind_jax.data import SAMPLE3_DIR
    data = head(SAMPLE3_DIR / "rlaif.jsonl", tmp_path / "rlaif.jsonl", 8)             # 2 rollout steps per epoch
    flags = ["--minimind", "3", "--from_weight", "none", "--data_path", str(data), "--batch_size", "4",
             "--mini_batch_size", "2", "--max_seq_len", "64", "--max_gen_len", "8", "--learning_rate", "1e-3",
             "--epochs", "2"]
    lr, T = 1e-3, 2 * 2 * 2 * 2                         # 4 rollout steps x (2 passes x 2 minibatches)
    cosine = lambda n: lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * n / T))
    free = train(tmp_path / "free", "ppo", *flags, "--early_stop_kl", "1e9", "--max_steps", "2")
    assert [r["updates"] for r in free] == [4, 4]
    np.testing.assert_allclose([r["lr"] for r in free], [cosine(3), cosine(7)], rtol=1e-6)
    stopped = train(tmp_path / "stopped", "ppo", *flags, "--early_stop_kl", "1e-6", "--max_steps", "2")
    assert [r["updates"] for r in stopped] == [1, 1]
    np.testing.assert_allclose([r["lr"] for r in stopped], [cosine(0), cosine(1)], rtol=1e-6)
