"""CISPO and GRPO-clip at MiniMind-3: golden parity (both loss types, the agent packing's masks), group advantages,
the per-turn eos cut, and the properties that define the objectives."""
import jax
import numpy as np
from hypothesis import given

import losses
from tests.losses.helpers import assert_close, floats, logps, masks, pad_columns, prefix_masks

G, GROUPS, R = 4, 3, 6
N = G * GROUPS
_adv = jax.jit(losses.group_advantages, static_argnums=1)
_loss = jax.jit(jax.value_and_grad(losses.group_policy_loss),
                static_argnames=("beta", "loss_type", "epsilon", "epsilon_high", "skip_empty_rows"))


def test_grpo_cispo_golden(golden3):
    g = golden3("loss_grpo_cispo")
    for loss_type in ("cispo", "grpo"):
        out = lambda k: g[f"{loss_type}/{k}"]
        assert_close(_adv(g["rewards"], 4), out("advantages"))
        mask = losses.through_first_eos(g["completion_ids"], g["completion_pad_mask"], 2)
        np.testing.assert_array_equal(mask, out("completion_mask"))
        loss, grad = _loss(g["per_token_logps"], g["old_per_token_logps"], g["ref_per_token_logps"],
                           out("advantages"), mask, beta=0.1, loss_type=loss_type, epsilon=0.2, epsilon_high=5.0)
        assert_close(loss, out("policy_loss"))
        np.testing.assert_allclose(grad, out("grad_per_token_logps"), atol=1e-5)


def test_agent_loss_golden(golden3):
    """The agent trainer's mask (generated tokens, cut after an eos inside a turn) and loss, which leaves rows
    with nothing to train out of the mean; with and without left truncation."""
    g = golden3("loss_agent")
    for case in ("full", "trunc"):
        out = lambda k: g[f"{case}/{k}"]
        ids = out("input_ids")
        mask = losses.spans_through_first_eos(ids[:, 1:], out("full_response_masks")[:, 1:], 2)
        np.testing.assert_array_equal(mask, out("completion_mask"))
        assert_close(_adv(out("rewards"), 2), out("advantages"))
        loss, grad = _loss(out("per_token_logps"), out("old_per_token_logps"), out("ref_per_token_logps"),
                           out("advantages"), mask, beta=0.1, skip_empty_rows=True)
        assert_close(loss, out("policy_loss"))
        np.testing.assert_allclose(grad, out("grad_per_token_logps"), atol=1e-5)


@given(floats((N,), -3.0, 3.0))
def test_group_advantages_are_population_normalised(rewards):
    r = rewards.reshape(GROUPS, G).astype(np.float64)
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)
    expected[np.all(r == r[:, :1], axis=1)] = 0
    np.testing.assert_allclose(_adv(rewards, G), expected.ravel(), rtol=1e-4, atol=1e-4)


@given(logps((N, R)), logps((N, R)), floats((N,), -3, 3), prefix_masks(N, R))
def test_cispo_gradient_is_the_capped_ratio_times_advantage(lp, old, adv, m):
    """d loss / d logp_t = (-sg(min(ratio, eps_high)) A + beta (1 - exp(ref - logp))) m / (len N): at ref = logp
    only the capped policy-gradient weight is left, and it never vanishes (no clip zeroes a token)."""
    _, grad = _loss(lp, old, lp, adv, m, beta=0.1, epsilon_high=5.0)
    weight = np.minimum(np.exp(lp.astype(np.float64) - old), 5.0)
    expected = -weight * adv[:, None] * m / m.sum(1, keepdims=True) / N
    np.testing.assert_allclose(grad, expected, rtol=2e-4, atol=1e-7)


@given(logps((N, R)), floats((N,), -3, 3), prefix_masks(N, R))
def test_on_policy_both_loss_types_are_the_policy_gradient(lp, adv, m):
    """old_logps=None (ratio 1 in value): CISPO and GRPO-clip have the same gradient, -A m / (len N) at ref."""
    for loss_type in ("cispo", "grpo"):
        _, grad = _loss(lp, None, lp, adv, m, beta=0.1, loss_type=loss_type)
        np.testing.assert_allclose(grad, -adv[:, None] * m / m.sum(1, keepdims=True) / N, rtol=1e-5, atol=1e-7)


@given(logps((N, R)), logps((N, R)), logps((N, R)), floats((N,), -3, 3), prefix_masks(N, R), floats((N, 3), -1e3, 1e3))
def test_masked_positions_never_matter(lp, old, ref, adv, m, junk):
    loss, grad = _loss(lp, old, ref, adv, m, beta=0.1)
    pad = lambda x: np.concatenate([x, junk], axis=1)
    loss2, grad2 = _loss(pad(lp), pad(old), pad(ref), adv, pad_columns(m, 3), beta=0.1)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad2)[:, R:], 0)


@given(masks((N, 12), min_ones_per_row=0), masks((N, 12), min_ones_per_row=0))
def test_each_turn_is_cut_after_its_first_eos(mask, eos_at):
    ids = np.where(eos_at == 1, 2, 7)
    cut = np.asarray(losses.spans_through_first_eos(ids, mask, 2))
    for row_ids, row_m, row_cut in zip(ids, mask, cut):
        expected, seen = np.zeros_like(row_m), False
        for t in range(len(row_m)):
            if not row_m[t]:
                seen = False                        # a new turn starts after the observation tokens
                continue
            expected[t] = not seen
            seen |= row_ids[t] == 2
        np.testing.assert_array_equal(row_cut, expected)
