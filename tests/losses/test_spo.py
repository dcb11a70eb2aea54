"""SPO, the reference's form: the global tracker against the golden three-step trace, its bounds, the loss."""
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from hypothesis import given
from hypothesis import strategies as st

import losses
from tests.losses.helpers import assert_close, floats, logps, pad_columns, prefix_masks

B, R = 5, 6
_update = jax.jit(losses.spo_tracker_update)
_spo = jax.jit(jax.value_and_grad(losses.spo_loss), static_argnames=("kl_estimator", "loss_norm", "max_tokens"))


def test_spo_golden(golden):
    g = golden("loss_spo")
    state = losses.spo_tracker_init()
    for k in range(3):
        assert_close(losses.spo_baseline(state), g["baseline"][k])
        state, rho = _update(state, g[f"rewards_{k}"], g[f"logps_{k}"], g[f"mask_{k}"])
        assert_close(rho, g["rho"][k])
        assert_close(state.alpha, g["alpha"][k])
        assert_close(state.beta, g["beta_state"][k])
    assert_close(losses.spo_advantages(g["rewards_2"], g["baseline"][2]), g["advantages"])
    loss, grad = _spo(g["logps_2"], g["ref_logps"], g["advantages"], g["mask_2"], g["beta"])
    assert_close(loss, g["loss"])
    assert_close(grad, g["grad_logps"])


steps_st = st.lists(st.tuples(floats((B,), -6.0, 6.0), logps((B, R)), prefix_masks(B, R)), min_size=1, max_size=12)


@given(steps_st)
def test_baseline_in_unit_interval_and_rho_in_bounds(steps):
    """Whatever the rewards (even beyond [-3, 3]) and log-probs, b stays in (0, 1) and rho in [0.5, 0.96]."""
    state = losses.spo_tracker_init()
    for k, (rewards, lp, m) in enumerate(steps):
        state, rho = _update(state, rewards, lp, m)
        b = float(losses.spo_baseline(state))
        assert 0 < b < 1
        assert 0.5 <= float(rho) <= 0.96 and (k > 0 or float(rho) == np.float32(0.9))
        assert state.alpha > 0 and state.beta > 0


@given(floats((B,), -3.0, 3.0), logps((B, R)), prefix_masks(B, R), floats((B, R), -50, 0))
def test_update_reads_only_masked_logps(rewards, lp, m, junk):
    state, _ = _update(losses.spo_tracker_init(), rewards, lp, m)
    state2, _ = _update(losses.spo_tracker_init(), rewards, np.where(m == 1, lp, junk), m)
    np.testing.assert_allclose(state2.old_mean_logp, state.old_mean_logp, rtol=1e-6)
    # atol: XLA on CPU flushes subnormals to 0, and hypothesis likes log-probs of -1e-45
    np.testing.assert_allclose(state.old_mean_logp, lp[m == 1].mean(), rtol=1e-5, atol=1e-30)


def test_no_drift_keeps_rho_at_its_cap():
    state = losses.spo_tracker_init()
    lp, m, r = jnp.full((B, R), -2.0), jnp.ones((B, R)), jnp.zeros(B)
    state, rho0 = _update(state, r, lp, m)
    state, rho1 = _update(state, r, lp, m)
    np.testing.assert_allclose([rho0, rho1], [0.9, 0.96], rtol=1e-6)
    _, rho2 = _update(state, r, lp - 0.03, m)                      # drift of d_half / 2: rho = 2^(-1/2)
    np.testing.assert_allclose(rho2, 2 ** -0.5, rtol=1e-4)


@given(floats((B,), -3.0, 3.0), st.floats(0.01, 0.99))
def test_advantages(rewards, b):
    a = np.asarray(losses.spo_advantages(rewards, jnp.float32(b)))
    np.testing.assert_allclose(a, np.clip(rewards - (6 * b - 3), -5, 5), rtol=1e-5, atol=1e-5)
    w = np.asarray(losses.spo_advantages(rewards, jnp.float32(b), batch_normalize=True))
    if np.std(rewards, ddof=1) > 1e-2:
        np.testing.assert_allclose([w.mean(), w.std(ddof=1)], [0, 1], atol=1e-4)


@given(logps((B, R)), logps((B, R)), floats((B,), -5, 5), prefix_masks(B, R), floats((B, R), -1e3, 1e3))
def test_loss_formula_masking_and_padding(lp, ref, adv, m, junk):
    d = ref - lp
    per_token = -lp * adv[:, None] + 0.02 * (np.exp(d) - d - 1)
    loss, grad = _spo(lp, ref, adv, m, 0.02)
    np.testing.assert_allclose(loss, np.mean((per_token * m).sum(1) / m.sum(1)), rtol=1e-4, atol=1e-4)
    loss2, grad2 = _spo(np.where(m == 1, lp, junk), np.where(m == 1, ref, -junk), adv, m, 0.02)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    assert np.all(np.isfinite(grad2)) and np.all(np.asarray(grad2)[m == 0] == 0)
    padded = losses.spo_loss(pad_columns(lp, 2), pad_columns(ref, 2), adv, pad_columns(m, 2), 0.02)
    np.testing.assert_allclose(padded, loss, rtol=1e-5)


def test_tracker_checkpoints_with_orbax(tmp_path):
    state, _ = _update(losses.spo_tracker_init(), jnp.ones(B), jnp.full((B, R), -1.0), jnp.ones((B, R)))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "tracker", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "tracker", jax.eval_shape(losses.spo_tracker_init))
    assert isinstance(restored, losses.SPOTracker)
    jax.tree.map(np.testing.assert_array_equal, restored, state)
