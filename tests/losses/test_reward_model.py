"""bradley_terry_loss: formula, log 2 at a tie, gradient direction, metrics."""
import jax
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import losses
from tests.losses.helpers import floats

_bt = jax.jit(jax.value_and_grad(losses.bradley_terry_loss, argnums=(0, 1), has_aux=True))


@given(floats((6,)), floats((6,)), st.floats(0.0, 2.0))
def test_formula_and_metrics(chosen, rejected, margin):
    (loss, metrics), _ = _bt(chosen, rejected, margin=margin)
    gap = chosen.astype(np.float64) - rejected
    np.testing.assert_allclose(loss, np.mean(np.logaddexp(0.0, -(gap - margin))), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(gap > 0), atol=1e-6)
    np.testing.assert_allclose(metrics["margin"], gap.mean(), rtol=1e-5, atol=1e-5)


@given(floats((6,)))
def test_tie_is_log2_and_gradients_push_scores_apart(scores):
    (loss, metrics), (g_chosen, g_rejected) = _bt(scores, scores)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    assert metrics["accuracy"] == 0
    assert np.all(np.asarray(g_chosen) < 0) and np.all(np.asarray(g_rejected) > 0)   # descent raises chosen
    np.testing.assert_allclose(g_chosen, -np.asarray(g_rejected), rtol=1e-6)
