"""dpo_loss: golden parity, the properties of the issue, and the sum / label-smoothing / IPO variants."""
import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import losses
from tests.losses.helpers import assert_close, logps, masks, pad_columns

PAIRS, T = 3, 5
_dpo = jax.jit(jax.value_and_grad(losses.dpo_loss), static_argnames=("average_log_prob", "loss_type"))
_dpo_metrics = jax.jit(lambda *a: losses.dpo_loss(*a, return_metrics=True))


def test_dpo_golden(golden):
    g = golden("loss_dpo")                         # the last row (a rejected one) is fully masked
    assert g["mask"][-1].sum() == 0
    loss, grad = _dpo(g["policy_logps"], g["ref_logps"], g["mask"], g["beta"])
    assert_close(loss, g["loss"])
    assert_close(grad, g["grad_policy"])


@given(logps((2 * PAIRS, T)), masks((2 * PAIRS, T)), st.sampled_from([True, False]))
def test_log2_when_policy_equals_reference(lp, m, average):
    loss, _ = _dpo(lp, lp, m, 0.1, average_log_prob=average)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)


@given(logps((2 * PAIRS, T)), logps((2 * PAIRS, T)), masks((2 * PAIRS, T)), st.floats(0.01, 2.0))
def test_loss_decreases_as_the_chosen_margin_grows(lp, ref, m, delta):
    """Raising every chosen token's log-prob by delta raises the chosen margin and lowers the loss."""
    up = lp.copy()
    up[:PAIRS] += np.float32(delta)
    assert _dpo(up, ref, m, 0.1)[0] < _dpo(lp, ref, m, 0.1)[0]


@given(logps((2 * PAIRS, T)), logps((2 * PAIRS, T)), masks((2 * PAIRS, T)))
def test_fully_masked_row_is_finite(lp, ref, m):
    m = m.copy()
    m[-1] = 0
    loss, grad = _dpo(lp, ref, m, 0.1)
    assert np.isfinite(loss) and np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[-1] == 0)


@given(logps((2 * PAIRS, T)), logps((2 * PAIRS, T)), masks((2 * PAIRS, T)), logps((2 * PAIRS, T)))
def test_masked_positions_and_padding_never_matter(lp, ref, m, junk):
    for average in (True, False):
        loss, grad = _dpo(lp, ref, m, 0.1, average_log_prob=average)
        loss2, grad2 = _dpo(np.where(m == 1, lp, junk), np.where(m == 1, ref, junk - 1), m, 0.1,
                            average_log_prob=average)
        np.testing.assert_allclose(loss2, loss, rtol=1e-6)
        assert np.all(np.asarray(grad2)[m == 0] == 0)
        padded = losses.dpo_loss(pad_columns(lp, 2), pad_columns(ref, 2), pad_columns(m, 2), 0.1,
                                 average_log_prob=average)
        np.testing.assert_allclose(padded, loss, rtol=1e-6)


@given(logps((2 * PAIRS, T)), logps((2 * PAIRS, T)), masks((2 * PAIRS, T)))
def test_variants_match_their_formulas(lp, ref, m):
    beta, eps = 0.1, 0.2
    seq = lambda x: (x * m).sum(1)
    h_sum = (seq(lp)[:PAIRS] - seq(lp)[PAIRS:]) - (seq(ref)[:PAIRS] - seq(ref)[PAIRS:])
    logsig = lambda x: -np.logaddexp(0.0, -x)
    np.testing.assert_allclose(_dpo(lp, ref, m, beta, average_log_prob=False)[0],
                               np.mean(-logsig(beta * h_sum)), rtol=1e-5)
    smoothed = losses.dpo_loss(lp, ref, m, beta, average_log_prob=False, label_smoothing=eps)
    np.testing.assert_allclose(smoothed, np.mean(-(1 - eps) * logsig(beta * h_sum) - eps * logsig(-beta * h_sum)),
                               rtol=1e-5)
    ipo = _dpo(lp, ref, m, beta, average_log_prob=False, loss_type="ipo")[0]
    np.testing.assert_allclose(ipo, np.mean((h_sum - 1 / (2 * beta)) ** 2), rtol=1e-5)


@given(logps((2 * PAIRS, T)), logps((2 * PAIRS, T)), masks((2 * PAIRS, T)))
def test_metrics(lp, ref, m):
    loss, metrics = _dpo_metrics(lp, ref, m, 0.1)
    np.testing.assert_allclose(loss, _dpo(lp, ref, m, 0.1)[0], rtol=1e-6)
    mean = lambda x: (x * m).sum(1) / m.sum(1)
    chosen = 0.1 * (mean(lp) - mean(ref))[:PAIRS]
    rejected = 0.1 * (mean(lp) - mean(ref))[PAIRS:]
    np.testing.assert_allclose(metrics["chosen_reward"], chosen.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["rejected_reward"], rejected.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["reward_margin"], (chosen - rejected).mean(), rtol=1e-4, atol=1e-6)
    assert 0 <= metrics["reward_accuracy"] <= 1


def test_reference_gets_no_gradient_and_bad_loss_type_is_an_error():
    x, m = np.zeros((2, 3)), np.ones((2, 3))
    assert np.all(jax.grad(losses.dpo_loss, argnums=1)(x - 1, x, m, 0.1) == 0)
    with pytest.raises(ValueError, match="loss_type"):
        losses.dpo_loss(x, x, m, 0.1, loss_type="hinge")
