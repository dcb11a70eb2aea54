"""`--stage spo --spo_mode paper` on the tiny model: it runs and logs the per-prompt trackers and the
prioritised sampling, its table is initialised from offline samples, checkpointed, and restored exactly, and a
prompt it never visited keeps its prior. The math itself is tested in tests/losses/test_spo_paper.py (including
where the paper and minimind modes agree)."""
import shutil
from pathlib import Path

import jax
import numpy as np

import losses
from minimind_jax.data import epoch_permutation
from tests.train.helpers import TINY, train
from train import rng
from train.args import parser
from train.batches import step_rows
from train.engine import make_batch, setup
from train.run import config_of
from train.stages import spo_paper

N_INIT = 2
PAPER = ["--spo_mode", "paper", "--spo_init_samples", str(N_INIT), "--spo_rho_min", "0.875", "--reasoning", "0",
         "--answer_reward", "0", "--reward_fn", f"{Path(__file__)}:parity_reward", "--batch_size", "2",
         "--accumulation_steps", "2", "--max_seq_len", "48", "--max_gen_len", "12", "--learning_rate", "1e-3",
         "--from_weight", "full_sft", "--epochs", "3"]
N0 = 1 / (1 - 0.875)


def mass_bounds(prior_mass, visits, rho_min=0.875, rho_max=0.96):
    """(lowest, highest) alpha + beta after `visits` updates from `prior_mass`: each update is m <- rho m + 1 with
    rho in [rho_min, rho_max], so the mass is monotone in every rho and the bounds are the constant-rho paths."""
    def path(rho):
        return rho ** visits * prior_mass + (1 - rho ** visits) / (1 - rho)
    return path(rho_min), path(rho_max)


def parity_reward(prompts, responses, answers):
    """A binary reward the tiny model earns about half the time (it rarely gets an answer right): successes vary
    across prompts and samples, so priors, advantages and trackers are not all alike."""
    return np.array([len(r) % 2 for r in responses], np.float32)


def session_of(out, *flags):
    """A session over `out` as train.run builds it: a fresh state (the prior), or the last checkpoint's."""
    flags = parser().parse_args(["--stage", "spo_paper", "--out_dir", str(out), *TINY, *flags])
    return setup(*config_of(flags))


def table_of(session):
    return jax.tree.map(np.asarray, jax.device_get(session.state.extra["table"]))


def test_paper_mode_runs_logs_and_keeps_unvisited_priors(tmp_path, pretrained, sample_slices):
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    flags = ["--data_path", str(sample_slices["rlaif"]), *PAPER, "--max_steps", "6"]
    fresh = session_of(out, *flags)
    prior = table_of(fresh)
    first = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *np.shape(x)[2:]), make_batch(fresh, fresh.state, 0)[0])   # [A*B, ...]
    rec = train(out, "spo", *flags)
    table = table_of(session_of(out, *flags, "--from_resume", "1"))

    # the prior: N0 pseudo-samples of smoothed success rate, s of n = 2 completions succeeded
    N = len(prior.alpha)
    assert N == 16 and prior.response.shape == (N, 12) and not prior.visits.any()
    np.testing.assert_allclose(prior.alpha + prior.beta, N0, rtol=1e-6)
    s = prior.alpha * (N_INIT + 1) / N0 - 0.5
    np.testing.assert_allclose(s, np.round(s), atol=1e-5)
    assert np.all((0 <= np.round(s)) & (np.round(s) <= N_INIT)) and len(np.unique(s)) > 1

    # step 0: the loaded rows (seed, epoch, step) redrawn with replacement by the prior's sqrt(p(1-p)) + 0.05, then
    # advantages against the baseline before the update, normalised over the whole batch, and first visits' rho
    c = fresh.run.config
    loaded = step_rows(epoch_permutation(c.seed, 0, N), 0, c.optim.accumulation_steps, c.optim.batch_size).reshape(-1)
    weights = losses.spo_sampling_weights(losses.spo_table_baseline(prior, loaded))
    pick = losses.spo_resample(rng.draw(c.seed, "spo_resample", 0), weights)
    np.testing.assert_array_equal(first["index"], loaded[np.asarray(pick)])
    p_hat = np.asarray(losses.spo_table_baseline(prior, first["index"]))
    np.testing.assert_allclose(first["advantages"], losses.spo_paper_advantages(first["rewards"], p_hat), atol=1e-6)
    np.testing.assert_array_equal(first["rho"], np.float32(0.96))

    # logs: trackers, drift on revisits, sampling
    assert [r["step"] for r in rec] == list(range(1, 7))
    for r in rec:
        assert 0 < r["baseline"] < 1 and 0.875 - 1e-6 <= r["rho"] <= 0.96 + 1e-6
        assert 0 < r["sample_unique"] <= 1 and r["sample_weight_ratio"] >= 1 and 0 <= r["revisit_frac"] <= 1
        for key in ("loss", "reward", "kl", "clip_frac", "approx_kl", "ratio_mean", "response_len"):
            assert np.isfinite(r[key]), key
        assert abs(r["ratio_mean"] - 1) < 1e-4          # one update per rollout: the old policy is the policy
        assert abs(r["advantage_mean"]) < 1e-5          # normalised over the whole batch (both micro-batches)
    assert rec[0]["revisit_frac"] == 0 and rec[0]["rho"] == np.float32(0.96)
    assert abs(rec[0]["baseline"] - p_hat.mean()) < 1e-6 and rec[0]["reward"] == first["rewards"].mean()   # the same
    # a micro-batch with unequal advantages has a gradient (the converse needs the whole batch: unequal micro-batches)
    assert all(r["grad_norm"] > 0 for r in rec if r["advantage_std"] > 0)
    assert sum(r["grad_norm"] > 0 for r in rec) >= 3
    assert any(r["sample_unique"] < 1 for r in rec)                # drawn with replacement: repeats happen
    revisits = [r for r in rec if r["revisit_frac"] > 0]
    assert revisits and all(r["drift"] > 0 for r in revisits)      # the policy moved between visits

    # the checkpointed table: every row of the 6 steps counted, unvisited prompts exactly as initialised
    assert table.visits.sum() == 6 * 2 * 2
    seen = table.visits > 0
    assert 0 < seen.sum() < N
    for got, want in zip(table, prior):
        np.testing.assert_array_equal(got[~seen], want[~seen])
    assert np.all(table.response_len[seen] > 0)
    # visited: each visit forgot by its rho in [rho_min, 0.96], then counted one reward; and the drift between
    # visits made some prompt forget faster than 0.96 (the stage hands the table the rho it measured)
    low, high = mass_bounds(N0, table.visits[seen])
    mass = table.alpha[seen] + table.beta[seen]
    assert np.all((low - 1e-4 <= mass) & (mass <= high + 1e-4)) and np.any(mass < high - 1e-3)


def test_prioritised_draw_reads_the_table():
    """The loaded rows' weights come from their own trackers: a row the policy solves half the time is drawn ~11
    times as often as one it always or never solves."""
    table = losses.spo_table_init(6, 3)._replace(alpha=np.array([1., 1, 1e-6, 1, 1, 5]),
                                                 beta=np.array([1., 9, 1, 1e-6, 1, 5]))
    loaded = np.array([2, 3, 0, 2], np.int32)                                                 # p_hat 0, 1, 0.5, 0
    pick, weights = spo_paper._prioritised(table, loaded, jax.random.PRNGKey(0))
    np.testing.assert_allclose(weights, [0.05, 0.05, 0.55, 0.05], atol=1e-3)
    np.testing.assert_array_equal(pick, losses.spo_resample(jax.random.PRNGKey(0), weights))
    draws = np.concatenate([np.asarray(spo_paper._prioritised(table, loaded, jax.random.PRNGKey(k))[0])
                            for k in range(200)])
    assert 0.7 < np.mean(draws == 2) < 0.85                                                   # 0.55 / 0.7


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
    tables = [table_of(session_of(out, *flags, "--max_steps", "6", "--from_resume", "1"))
              for out in (whole_out, split_out)]
    assert tables[0].visits.sum() == 6 * 2 * 2
    for got, want in zip(*tables):
        np.testing.assert_array_equal(got, want)


def test_paper_mode_drift_is_zero_while_the_policy_stands_still(tmp_path, pretrained, sample_slices):
    """Learning rate 0: every revisit rescores its stored completion under unchanged weights, so D = 0 (a fresh
    sample would differ from the stored one: D measures the policy's drift, not sampling noise) and rho = 0.96."""
    out = tmp_path / "out"
    shutil.copytree(pretrained, out)
    flags = ["--data_path", str(sample_slices["rlaif"]), *PAPER, "--spo_init_samples", "0", "--learning_rate", "0",
             "--max_steps", "8"]
    rec = train(out, "spo", *flags)
    revisits = [r for r in rec if r["revisit_frac"] > 0]
    assert len(revisits) >= 4 and any(r["grad_norm"] > 0 for r in revisits)     # weights still, gradients not
    for r in revisits:
        assert r["drift"] < 1e-5 and abs(r["rho"] - 0.96) < 1e-6
    # so every update forgot by exactly 0.96, from the Jeffreys prior Beta(0.5, 0.5)
    table = table_of(session_of(out, *flags, "--from_resume", "1"))
    assert table.visits.sum() == 8 * 2 * 2
    _, no_drift = mass_bounds(1.0, table.visits)
    np.testing.assert_allclose(table.alpha + table.beta, no_drift, rtol=1e-5)
