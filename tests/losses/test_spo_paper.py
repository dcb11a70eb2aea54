"""SPO as the paper defines it: the per-prompt table, drift-adaptive rho, scatter updates with repeats,
batch-normalised advantages, PPO-clip, prioritised resampling, and where the paper and minimind modes agree."""
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from hypothesis import given
from hypothesis import strategies as st

import losses
from losses.spo_paper import EXPLORATION, RHO_MAX, RHO_MIN
from tests.losses.helpers import floats, logps, pad_columns, prefix_masks

N, B, R = 7, 4, 5          # prompts in the data set, rows per batch, completion width
_rho = jax.jit(losses.spo_table_rho)
_update = jax.jit(losses.spo_table_update)
_loss = jax.jit(jax.value_and_grad(losses.spo_paper_loss), static_argnames=("loss_norm", "max_tokens"))
_resample = jax.jit(losses.spo_resample, static_argnames="num_samples")
_tracker_update = jax.jit(losses.spo_tracker_update)
_spo_grad = jax.jit(jax.grad(losses.spo_loss))
_paper_grad = jax.jit(jax.grad(lambda *a: losses.spo_paper_loss(*a, loss_norm="sequence")))

index_st = st.lists(st.integers(0, N - 1), min_size=B, max_size=B).map(lambda xs: np.array(xs, np.int32))
batch_st = st.tuples(index_st, floats((B,), -0.5, 1.5), st.integers(0, 2 ** 31 - 1), logps((B, R)),
                     prefix_masks(B, R), logps((B, R)))


def visit(table, index, rewards, tokens, old_logps, mask, new_logps_of_stored):
    """One trainer step's table work: rho from drift on the stored completions, then the update."""
    rho, D = _rho(table, index, new_logps_of_stored)
    return _update(table, index, rewards, rho, tokens, old_logps, mask), rho, D


def tokens_from(seed):
    return np.random.default_rng(seed).integers(3, 100, (B, R)).astype(np.int32)


# ---- initialisation ------------------------------------------------------------------------------------------------

def test_init_from_offline_samples():
    s = np.array([0, 1, 4, 8, 2, 0, 5])
    table = losses.spo_table_init(N, R, s, 8, rho_min=0.875)                       # N0 = 8
    np.testing.assert_allclose(table.alpha, 8 * (s + 0.5) / 9, rtol=1e-6)
    np.testing.assert_allclose(table.beta, 8 * (8 - s + 0.5) / 9, rtol=1e-6)
    assert table.response.shape == (N, R) and not np.any(table.visits) and not np.any(table.response_len)


def test_init_without_samples_is_jeffreys():
    for table in (losses.spo_table_init(N, R), losses.spo_table_init(N, R, np.zeros(N), 0)):
        np.testing.assert_array_equal(table.alpha, 0.5)
        np.testing.assert_array_equal(table.beta, 0.5)
    mixed = losses.spo_table_init(3, R, np.array([1, 0, 2]), np.array([2, 0, 4]), rho_min=0.5)   # per-prompt n
    np.testing.assert_allclose(mixed.alpha, [1.0, 0.5, 1.0], rtol=1e-6)


# ---- the tracker's invariants over random visit sequences -----------------------------------------------------------

@given(st.lists(batch_st, min_size=1, max_size=8), st.sampled_from([0, 4]))
def test_table_invariants(batches, n_init):
    """Baselines in (0, 1), rho in [rho_min, 0.96] (0.96 on a first visit), D >= 0, visits counted, and a prompt
    never visited keeps its prior exactly."""
    s = np.arange(N) % (n_init + 1)
    prior = losses.spo_table_init(N, R, s, n_init)
    table, seen = prior, np.zeros(N, bool)
    for index, rewards, seed, old_lp, mask, drift in batches:
        stored, stored_mask, stored_lp = losses.spo_table_stored(table, index)
        table, rho, D = visit(table, index, rewards, tokens_from(seed), old_lp, mask, stored_lp + drift / 10)
        rho, D = np.asarray(rho), np.asarray(D)
        assert np.all((RHO_MIN <= rho) & (rho <= RHO_MAX)) and np.all(D >= 0)
        assert np.all(rho[~seen[index]] == np.float32(RHO_MAX))
        seen[index] = True
        p = np.asarray(losses.spo_table_baseline(table, np.arange(N)))
        assert np.all((0 < p) & (p < 1)) and np.all(np.asarray(table.alpha) > 0) and np.all(np.asarray(table.beta) > 0)
    assert np.asarray(table.visits).sum() == B * len(batches)
    for new, old in zip(table, prior):
        np.testing.assert_array_equal(np.asarray(new)[~seen], np.asarray(old)[~seen])


@given(index_st, floats((B,), 0.0, 1.0), floats((B,), RHO_MIN, RHO_MAX), st.integers(0, 2 ** 31 - 1), logps((B, R)),
       prefix_masks(B, R))
def test_batch_update_equals_row_by_row(index, rewards, rho, seed, lp, mask):
    """Repeats in a batch (resampling is with replacement): one scatter equals applying the rows in order, a repeat
    decaying by rho_max (same policy, D = 0), and the last repeat's completion is the one stored."""
    tokens = tokens_from(seed)
    table = losses.spo_table_init(N, R, np.arange(N) % 3, 2)
    batched = _update(table, index, rewards, rho, tokens, lp, mask)
    one_by_one, done = table, set()
    for i in range(B):
        row_rho = RHO_MAX if int(index[i]) in done else rho[i]
        one_by_one = _update(one_by_one, index[i:i + 1], rewards[i:i + 1], jnp.array([row_rho]), tokens[i:i + 1],
                             lp[i:i + 1], mask[i:i + 1])
        done.add(int(index[i]))
    for got, want in zip(batched, one_by_one):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@given(index_st, logps((B, R)), prefix_masks(B, R), logps((B, R)))
def test_rho_from_drift_on_the_stored_completion(index, lp, mask, junk):
    table = _update(losses.spo_table_init(N, R), index, np.ones(B), np.full(B, RHO_MAX), tokens_from(0), lp, mask)
    _, stored_mask, stored_lp = losses.spo_table_stored(table, index)
    rho, D = _rho(table, index, stored_lp)                                  # no drift
    np.testing.assert_array_equal(D, 0)
    np.testing.assert_allclose(rho, RHO_MAX)
    shifted = np.where(np.asarray(stored_mask) == 1, np.asarray(stored_lp) - 0.03, junk)   # masked: anything
    rho, D = _rho(table, index, shifted)
    np.testing.assert_allclose(D, 0.03, rtol=1e-4)
    np.testing.assert_allclose(rho, np.clip(2 ** (-0.5), RHO_MIN, RHO_MAX), rtol=1e-4)   # 0.875: clipped at rho_min
    rho, _ = _rho(table, index, np.asarray(stored_lp) - 0.009, rho_min=0.5)
    np.testing.assert_allclose(rho, 2 ** (-0.15), rtol=1e-4)


def test_stored_completion_round_trips():
    index = np.array([3, 0, 5, 1], np.int32)
    tokens, lp = tokens_from(1), -np.arange(B * R, dtype=np.float32).reshape(B, R) / 10
    mask = (np.arange(R)[None] < np.array([1, 5, 3, 2])[:, None]).astype(np.int32)
    table = _update(losses.spo_table_init(N, R), index, np.ones(B), np.full(B, 0.9), tokens, lp, mask)
    stored, stored_mask, stored_lp = losses.spo_table_stored(table, index)
    np.testing.assert_array_equal(stored, tokens)
    np.testing.assert_array_equal(stored_mask, mask)
    np.testing.assert_allclose(stored_lp, lp * mask)


# ---- advantages, loss, sampling -------------------------------------------------------------------------------------

@given(floats((8,), 0.0, 1.0), floats((8,), 0.01, 0.99))
def test_advantages_are_batch_normalised(r, p):
    a = np.asarray(losses.spo_paper_advantages(r, p))
    raw = r - p
    if np.all(raw == raw[0]):
        assert np.all(a == 0)
    elif np.std(raw, ddof=1) > 1e-3:
        np.testing.assert_allclose([a.mean(), a.std(ddof=1)], [0, 1], atol=1e-4)
        assert np.all(np.diff(a[np.argsort(raw)]) >= -1e-6)                  # an increasing map: order kept
    np.testing.assert_allclose(losses.spo_paper_advantages(r, p, batch_normalize=False), raw, rtol=1e-6)


@given(logps((B, R)), floats((B, R), -0.5, 0.5), floats((B,), -2, 2), prefix_masks(B, R))
def test_ppo_clip_loss(old, log_ratio, adv, mask):
    """Gradient -A ratio m / sum(m) (token mean) where the clip is inactive, exactly 0 where it binds."""
    lp = old + log_ratio
    loss, grad = _loss(lp, old, adv, mask)
    ratio = np.exp(log_ratio.astype(np.float64))
    A = adv[:, None]
    binds = ((A > 0) & (ratio > 1.2 + 1e-4)) | ((A < 0) & (ratio < 0.8 - 1e-4))
    live = (((A > 0) & (ratio < 1.2 - 1e-4)) | ((A < 0) & (ratio > 0.8 + 1e-4))) & (mask == 1)
    grad = np.asarray(grad)
    assert np.all(grad[binds | (mask == 0)] == 0)
    np.testing.assert_allclose(grad[live], (-A * ratio / mask.sum())[live], rtol=1e-3, atol=1e-7)
    objective = -np.minimum(ratio * A, np.clip(ratio, 0.8, 1.2) * A)
    np.testing.assert_allclose(loss, (objective * mask).sum() / mask.sum(), rtol=1e-4, atol=1e-5)


@given(logps((B, R)), floats((B, R), -0.5, 0.5), floats((B,), -2, 2), prefix_masks(B, R), floats((B, R), -1e3, 1e3))
def test_loss_masked_positions_and_padding_never_matter(old, log_ratio, adv, mask, junk):
    lp = old + log_ratio
    for norm in ("token", "sequence"):
        loss, grad = _loss(lp, old, adv, mask, loss_norm=norm)
        loss2, grad2 = _loss(np.where(mask == 1, lp, junk), np.where(mask == 1, old, -junk), adv, mask, loss_norm=norm)
        np.testing.assert_allclose(loss2, loss, rtol=1e-6)
        assert np.all(np.isfinite(grad2)) and np.all(np.asarray(grad2)[mask == 0] == 0)
        padded = losses.spo_paper_loss(pad_columns(lp, 2), pad_columns(old, 2), adv, pad_columns(mask, 2),
                                       loss_norm=norm)
        np.testing.assert_allclose(padded, loss, rtol=1e-5)


@given(floats((16,), -1.0, 2.0))
def test_sampling_weights_are_positive_and_peak_at_one_half(p):
    w = np.asarray(losses.spo_sampling_weights(p))
    assert np.all(w >= EXPLORATION) and np.all(w <= 0.5 + EXPLORATION + 1e-6)
    np.testing.assert_allclose(losses.spo_sampling_weights(jnp.array([0.5, 0.0, 1.0])), [0.55, 0.05, 0.05], rtol=1e-6)


def test_resample_is_deterministic_and_follows_the_weights():
    w = jnp.array([0.55, 0.05, 0.3, 0.05])
    key = jax.random.PRNGKey(7)
    a, b = _resample(key, w), _resample(key, w)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4,) and a.dtype == jnp.int32
    many = np.asarray(_resample(key, w, num_samples=20000))
    assert many.min() >= 0 and many.max() < 4
    np.testing.assert_allclose(np.bincount(many, minlength=4) / 20000, w / w.sum(), atol=0.015)
    assert not np.array_equal(_resample(jax.random.PRNGKey(8), w, num_samples=64), many[:64])


# ---- paper vs minimind ----------------------------------------------------------------------------------------------

def test_paper_and_minimind_modes_agree_on_one_prompt_constant_reward_no_drift():
    """One prompt, reward r in [0, 1] (minimind sees 6r - 3), identical log-probs every visit (D = 0), the same
    Beta(1, 1) prior: the same baselines, rhos and pseudo-counts; advantages A_minimind = 6 A_paper (before the
    paper's batch normalisation, which one row would zero) and, at ratio 1 and beta = 0, gradients in that ratio.
    The one difference by design is the first update's rho: the reference's rho_const 0.9 versus the paper's 0.96."""
    r, mask = 0.75, jnp.ones((1, R), jnp.int32)
    lp = jnp.linspace(-3.0, -0.5, R)[None]
    tokens = jnp.arange(R, dtype=jnp.int32)[None]
    tracker = losses.spo_tracker_init()                                               # alpha = beta = 1
    table = losses.spo_table_init(1, R, np.array([1]), 2, rho_min=0.5)                # alpha = beta = 1 too
    for _ in range(20):
        b_mm, b_p = losses.spo_baseline(tracker), losses.spo_table_baseline(table, jnp.array([0]))[0]
        np.testing.assert_allclose(b_mm, b_p, rtol=1e-6)
        a_mm = losses.spo_advantages(jnp.array([6 * r - 3]), b_mm)
        a_p = losses.spo_paper_advantages(jnp.array([r]), b_p[None], batch_normalize=False)
        np.testing.assert_allclose(a_mm, 6 * a_p, rtol=1e-5)
        np.testing.assert_allclose(_spo_grad(lp, lp, a_mm, mask, 0.0), 6 * _paper_grad(lp, lp, a_p, mask), rtol=1e-5)
        tracker, rho_mm = _tracker_update(tracker, jnp.array([6 * r - 3]), lp, mask, rho_first=0.96)
        table, rho_p, D = visit(table, jnp.array([0]), jnp.array([r]), tokens, lp, mask, lp)
        assert D[0] == 0 and rho_mm == rho_p[0] == np.float32(0.96)
        np.testing.assert_allclose([tracker.alpha, tracker.beta], [table.alpha[0], table.beta[0]], rtol=1e-5)
    assert abs(float(losses.spo_baseline(tracker)) - r) < 0.1                        # both approach r
    _, rho_first = losses.spo_tracker_update(losses.spo_tracker_init(), jnp.array([1.5]), lp, mask)
    assert rho_first == np.float32(0.9)


# ---- state: jit, checkpoint, shard ----------------------------------------------------------------------------------

def test_table_checkpoints_with_orbax(tmp_path):
    table = _update(losses.spo_table_init(N, R, np.arange(N) % 3, 2), np.array([1, 4, 1, 6], np.int32), np.ones(B),
                    np.full(B, 0.9), tokens_from(3), -np.ones((B, R), np.float32), np.ones((B, R), np.int32))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "table", table)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "table", jax.eval_shape(lambda: losses.spo_table_init(N, R)))
    assert isinstance(restored, losses.SPOTable)
    jax.tree.map(np.testing.assert_array_equal, restored, table)


def test_fresh_table_and_tracker_can_be_donated():
    """The train step donates its state: no two leaves may share a buffer."""
    for table in (losses.spo_table_init(N, R), losses.spo_table_init(N, R, np.ones(N), 2)):
        args = (np.array([0, 2, 0, 5], np.int32), np.ones(B), np.full(B, 0.9), tokens_from(0), -np.ones((B, R)),
                np.ones((B, R), np.int32))
        jax.block_until_ready(jax.jit(losses.spo_table_update, donate_argnums=0)(table, *args))
    tracker = losses.spo_tracker_init()
    jax.block_until_ready(jax.jit(losses.spo_tracker_update, donate_argnums=0)(tracker, np.ones(B), -np.ones((B, R)),
                                                                                np.ones((B, R))))


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import losses
    table = losses.spo_table_init(8, 3, np.arange(8) % 3, 2)
    sharded = jax.device_put(table, NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data")))
    assert len(sharded.response.sharding.device_set) == 4
    args = (jnp.array([1, 6, 1, 7]), jnp.array([1., 0., 1., .5]), jnp.full(4, .9), jnp.ones((4, 3), jnp.int32),
            -jnp.ones((4, 3)), jnp.ones((4, 3), jnp.int32))
    update = jax.jit(losses.spo_table_update)
    jax.tree.map(np.testing.assert_array_equal, update(sharded, *args), update(table, *args))
    print("ok")
""")


def test_table_update_is_the_same_sharded_along_prompts():
    """The table sharded over 4 (fake CPU) devices along the prompt axis updates exactly as on one."""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", SHARDED], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
