"""grpo_advantages and grpo_loss: golden parity, group properties, the Dr. GRPO / DAPO variants, masking."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given

import losses
from tests.losses.helpers import assert_close, floats, logps, pad_columns, prefix_masks

G, GROUPS, R = 4, 3, 6
N = G * GROUPS
_adv = jax.jit(losses.grpo_advantages, static_argnums=1, static_argnames=("scale_rewards", "batch_normalize"))
_grpo = jax.jit(jax.value_and_grad(losses.grpo_loss),
                static_argnames=("kl_estimator", "loss_norm", "max_tokens"))
rewards_st = floats((N,), -3.0, 4.5)


def test_grpo_golden(golden):
    g = golden("loss_grpo")                        # the first group's rewards are all equal
    G_ = int(g["num_generations"])
    assert_close(_adv(g["rewards"], G_), g["advantages"])
    np.testing.assert_array_equal(losses.completion_mask(g["completion_ids"], int(g["eos_id"])), g["completion_mask"])
    loss, grad = _grpo(g["logps"], g["ref_logps"], g["advantages"], g["completion_mask"], g["beta"])
    assert_close(loss, g["loss"])
    assert_close(grad, g["grad_logps"])


@given(rewards_st)
def test_group_advantages_are_zero_mean_and_equal_groups_are_zero(rewards):
    rewards = rewards.copy()
    rewards[:G] = rewards[0]                                             # one degenerate group
    for normalize in (True, False):
        a = np.asarray(_adv(rewards, G, batch_normalize=normalize)).reshape(GROUPS, G)
        np.testing.assert_allclose(a.mean(1), 0.0, atol=1e-5)
        assert np.all(a[0] == 0) or normalize and np.all(np.abs(a[0]) < 1e-5)


def test_all_degenerate_groups_give_exact_zeros():
    """Equal rewards whose float mean is inexact (0.1 * 4) must not become a signal after normalisation."""
    r = np.full(N, 0.1, np.float32)
    assert np.all(np.asarray(_adv(r, G)) == 0)


@given(rewards_st)
def test_advantage_formula_and_dr_grpo_variant(rewards):
    r = rewards.reshape(GROUPS, G).astype(np.float64)
    centred = r - r.mean(1, keepdims=True)
    scaled = np.clip(centred / (r.std(1, ddof=1, keepdims=True) + 1e-4), -10, 10)
    equal = np.all(r == r[:, :1], axis=1, keepdims=True)
    expected = np.where(equal, 0, scaled).ravel()
    np.testing.assert_allclose(_adv(rewards, G, batch_normalize=False), expected, rtol=1e-4, atol=1e-4)
    dr = np.clip(np.where(equal, 0, centred), -10, 10).ravel()         # Dr. GRPO: no std division
    np.testing.assert_allclose(_adv(rewards, G, scale_rewards=False, batch_normalize=False), dr, rtol=1e-5, atol=1e-5)


@given(logps((N, R)), logps((N, R)), floats((N,), -3, 3), prefix_masks(N, R))
def test_loss_formula_and_normalisations(lp, ref, adv, m):
    beta = 0.02
    d = ref - lp
    per_token = -(adv[:, None] - beta * (np.exp(d) - d - 1))
    seq = np.mean((per_token * m).sum(1) / m.sum(1))
    np.testing.assert_allclose(_grpo(lp, ref, adv, m, beta)[0], seq, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_grpo(lp, ref, adv, m, beta, loss_norm="token")[0],
                               (per_token * m).sum() / m.sum(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_grpo(lp, ref, adv, m, beta, loss_norm="constant", max_tokens=16)[0],
                               (per_token * m).sum() / (N * 16), rtol=1e-4, atol=1e-5)
    k1 = -(adv[:, None] - beta * (lp - ref))
    np.testing.assert_allclose(_grpo(lp, ref, adv, m, beta, kl_estimator="k1")[0],
                               np.mean((k1 * m).sum(1) / m.sum(1)), rtol=1e-4, atol=1e-5)


@given(logps((N, R)), floats((N,), -3, 3), prefix_masks(N, R))
def test_gradient_is_the_policy_gradient_at_the_reference(lp, adv, m):
    """With policy == reference the KL term has zero gradient: d loss / d logp = -A m / (len * N)."""
    _, grad = _grpo(lp, lp, adv, m, 0.02)
    np.testing.assert_allclose(grad, -adv[:, None] * m / m.sum(1, keepdims=True) / N, rtol=1e-5, atol=1e-7)


@given(logps((N, R)), logps((N, R)), floats((N,), -3, 3), prefix_masks(N, R), floats((N, R), -1e3, 1e3))
def test_masked_positions_and_padding_never_matter(lp, ref, adv, m, junk):
    for norm in ("sequence", "token", "constant"):
        loss, grad = _grpo(lp, ref, adv, m, 0.02, loss_norm=norm, max_tokens=R)
        loss2, grad2 = _grpo(np.where(m == 1, lp, junk), np.where(m == 1, ref, -junk), adv, m, 0.02, loss_norm=norm,
                             max_tokens=R)
        np.testing.assert_allclose(loss2, loss, rtol=1e-6)
        assert np.all(np.isfinite(grad2)) and np.all(np.asarray(grad2)[m == 0] == 0)
        padded = losses.grpo_loss(pad_columns(lp, 3), pad_columns(ref, 3), adv, pad_columns(m, 3), 0.02,
                                  loss_norm=norm, max_tokens=R)
        np.testing.assert_allclose(padded, loss, rtol=1e-5)


def test_metrics():
    lp, ref = jnp.full((2, 3), -1.0), jnp.full((2, 3), -1.5)
    m = jnp.array([[1, 1, 0], [1, 0, 0]])
    loss, metrics = losses.grpo_loss(lp, ref, jnp.array([1.0, -1.0]), m, 0.02, return_metrics=True)
    np.testing.assert_allclose(metrics["kl"], np.exp(-0.5) + 0.5 - 1, rtol=1e-6)
    assert metrics["completion_len"] == 1.5 and metrics["advantage_mean"] == 0
    np.testing.assert_allclose(loss, losses.grpo_loss(lp, ref, jnp.array([1.0, -1.0]), m, 0.02), rtol=1e-7)
