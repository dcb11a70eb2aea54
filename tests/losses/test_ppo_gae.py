"""PPO with GAE at MiniMind-3: golden parity of the masks, token rewards, GAE, whitening and the minibatch loss
(both discount settings, gradients included), and GAE's defining recursion."""
import jax
import numpy as np
from hypothesis import given, strategies as st

import losses
from tests.losses.helpers import assert_close, floats, prefix_masks

CASES = {"default": (1.0, 0.95), "gamma099_lam09": (0.99, 0.9)}
_loss = jax.jit(jax.value_and_grad(losses.ppo_gae_loss, argnums=(0, 3), has_aux=True))


def test_ppo_gae_golden(golden3):
    g = golden3("loss_ppo_gae")
    P = int(g["prompt_len"])
    completion = g["gen_out"][:, P:]
    R = completion.shape[1]
    for case, (gamma, lam) in CASES.items():
        out = lambda k: g[f"{case}/{k}"]
        lengths = losses.response_lengths(completion, np.ones_like(completion), 2)
        np.testing.assert_array_equal(lengths, out("resp_lengths"))
        m = losses.policy_mask(lengths, np.ones_like(completion))
        np.testing.assert_array_equal(m, out("resp_policy_mask"))
        values = g["values_old_full"][:, P - 1:P - 1 + R] * m            # the state before each response token
        rewards = losses.token_rewards(g["rewards"], lengths, m)
        np.testing.assert_array_equal(rewards, out("token_rewards"))
        adv, returns = losses.gae(rewards, values, gamma, lam)
        assert_close(adv, out("advantages_raw"))
        assert_close(returns, out("returns"))
        white = losses.masked_whiten(adv, m)
        np.testing.assert_allclose(white, out("advantages_whitened"), atol=1e-6)
        (total, metrics), (g_lp, g_v) = _loss(out("mb_resp_logp"), g["old_resp_logp"], out("ref_resp_logp"),
                                              out("mb_resp_values"), values, white, returns, m)
        assert_close(total, out("total_loss"))
        for name, key in (("value_loss", "value_loss"), ("kl_ref", "kl_ref_penalty"), ("approx_kl", "approx_kl"),
                          ("clipfrac", "clipfrac")):
            assert_close(metrics[name], out(key))
        # The policy loss is a difference of terms of ~0.1 that cancel to ~1e-3: float32 summation order alone
        # moves it by ~5e-8 (the float64 value lies between the reference's and ours).
        np.testing.assert_allclose(metrics["policy_loss"], out("policy_loss"), atol=2e-7)
        np.testing.assert_allclose(g_lp, out("grad_mb_resp_logp"), atol=1e-5)
        np.testing.assert_allclose(g_v, out("grad_mb_resp_values"), atol=1e-5)


@given(floats((5, 7), -2, 2), floats((5, 7), -2, 2), prefix_masks(5, 7), st.sampled_from(list(CASES.values())))
def test_gae_is_the_discounted_sum_of_td_errors(r, v, m, gl):
    gamma, lam = gl
    r, v = r * m, v * m
    adv, returns = map(np.asarray, losses.gae(r, v, gamma, lam))
    v_next = np.concatenate([v[:, 1:], np.zeros((5, 1))], axis=1)
    delta = r + gamma * v_next - v
    expected = np.array([[sum((gamma * lam) ** (k - t) * delta[b, k] for k in range(t, 7)) for t in range(7)]
                         for b in range(5)])
    np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(returns, adv + v, rtol=1e-6, atol=1e-6)


@given(floats((4, 6), -5, 5), prefix_masks(4, 6))
def test_whitening_gives_zero_mean_unit_variance_on_the_mask(x, m):
    w = np.asarray(losses.masked_whiten(x, m), np.float64)
    xs = x[m == 1].astype(np.float64)
    if xs.std() > 1e-2:
        np.testing.assert_allclose(w[m == 1].mean(), 0, atol=1e-4)
        np.testing.assert_allclose(w[m == 1].std(), 1, rtol=1e-3)
    assert np.all(w[m == 0] == 0)
