"""ppo_loss: golden parity (values and gradients for actor and critic), clipping, metrics."""
import jax
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import losses
from tests.losses.helpers import assert_close, floats

B = 6
EPS = 0.1


def _total(actor, values, old, ref, rewards, clip_eps, vf_coef, kl_coef):
    return losses.ppo_loss(actor, old, ref, values, rewards, clip_eps, vf_coef, kl_coef)


_ppo = jax.jit(jax.value_and_grad(_total, argnums=(0, 1), has_aux=True))


def test_ppo_golden(golden):
    g = golden("loss_ppo")
    (total, metrics), (grad_actor, grad_values) = _ppo(g["actor_logp"], g["values"], g["old_logp"], g["ref_logp"],
                                                       g["rewards"], 0.1, 0.5, 0.02)
    assert_close(total, g["total"])
    for key in ("policy_loss", "value_loss", "kl_ref"):
        assert_close(metrics[key], g[key])
    assert_close(grad_actor, g["grad_actor"])
    assert_close(grad_values, g["grad_values"])


@given(floats((B,), -30, -5), floats((B,), -1, 1), floats((B,), -1.0, 1.0), floats((B,), -3, 3))
def test_objective_is_flat_where_the_clip_binds(old, log_ratio, values, rewards):
    """d policy / d actor = 0 where A > 0 and ratio > 1 + eps, or A < 0 and ratio < 1 - eps; -A ratio / B elsewhere."""
    actor = old + log_ratio
    (_, metrics), (grad, _) = _ppo(actor, values, old, old, rewards, EPS, 0.0, 0.0)
    A, ratio = rewards - values, np.exp(actor.astype(np.float64) - old)
    flat = ((A > 0) & (ratio > 1 + EPS + 1e-4)) | ((A < 0) & (ratio < 1 - EPS - 1e-4))
    live = ((A > 0) & (ratio < 1 + EPS - 1e-4)) | ((A < 0) & (ratio > 1 - EPS + 1e-4))
    grad = np.asarray(grad)
    assert np.all(grad[flat] == 0)
    np.testing.assert_allclose(grad[live], (-A * ratio / B)[live], rtol=1e-3, atol=1e-6)
    assert 0 <= metrics["clip_frac"] <= 1
    np.testing.assert_allclose(metrics["clip_frac"], flat.mean(), atol=1 / B + 1e-6)  # boundary cases may differ


@given(floats((B,), -30, -5), floats((B,), -1, 1), floats((B,), -3, 3))
def test_ratio_one_means_no_clipping(old, values, rewards):
    (total, metrics), _ = _ppo(old, values, old, old, rewards, EPS, 0.5, 0.02)
    assert metrics["clip_frac"] == 0 and metrics["approx_kl"] == 0 and metrics["kl_ref"] == 0
    np.testing.assert_allclose(metrics["ratio_mean"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["policy_loss"], -np.mean(rewards - values), rtol=1e-5, atol=1e-5)


@given(floats((B,), -30, -5), floats((B,), -1, 1), floats((B,), -1, 1), floats((B,), -3, 3), st.floats(0.0, 2.0))
def test_value_gradient_is_only_the_value_loss(old, log_ratio, values, rewards, vf):
    """The advantage uses stop_grad(V): the critic's gradient is vf * 2 (V - r) / B whatever the policy term."""
    (_, _), (_, grad_values) = _ppo(old + log_ratio, values, old, old, rewards, EPS, vf, 0.02)
    np.testing.assert_allclose(grad_values, vf * 2 * (values - rewards) / B, rtol=1e-5, atol=1e-6)


def test_old_and_reference_get_no_gradient():
    x = np.linspace(-3, -1, B).astype(np.float32)
    grads = jax.grad(lambda old, ref: losses.ppo_loss(x, old, ref, x, x, 0.1, 0.5, 0.02)[0], argnums=(0, 1))(x - 1, x)
    assert all(np.all(g == 0) for g in grads)
