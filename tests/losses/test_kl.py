"""k1/k2/k3 KL estimators: signs, zeros, and that k1 and k3 are unbiased for KL(p || q) under samples from p."""
import jax
import numpy as np
import pytest
from hypothesis import given

import losses
from tests.losses.helpers import floats, logps

_k3 = jax.jit(losses.kl_k3)


@given(logps((64,)), logps((64,)))
def test_k3_nonnegative_and_zero_only_at_equality(logp, ref):
    k3 = np.asarray(_k3(logp, ref))
    assert np.all(k3 >= 0)
    assert np.all(np.asarray(_k3(logp, logp)) == 0)
    far = np.abs(logp - ref) > 1e-3                    # float32 resolves d^2 / 2 there
    assert np.all(k3[far] > 0)


@given(logps((16,)), logps((16,)))
def test_k1_k2_formulas(logp, ref):
    np.testing.assert_allclose(losses.kl_k1(logp, ref), logp - ref, rtol=1e-6)
    np.testing.assert_allclose(losses.kl_k2(logp, ref), 0.5 * (logp - ref) ** 2, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(losses.kl_k2(logp, ref)) >= 0)


@given(floats((12,), -5, 5), floats((12,), -5, 5))
def test_k1_and_k3_are_unbiased_estimates_of_kl(p_logits, q_logits):
    """E_{x~p}[k(log p(x), log q(x))] = KL(p || q) exactly for k1 and k3 (Schulman 2020), computed over the support."""
    log_p, log_q = np.asarray(jax.nn.log_softmax(p_logits)), np.asarray(jax.nn.log_softmax(q_logits))
    p = np.exp(log_p.astype(np.float64))
    kl = np.sum(p * (log_p - log_q))
    for estimator in ("k1", "k3"):
        expectation = np.sum(p * np.asarray(losses.kl_estimate(log_p, log_q, estimator), np.float64))
        np.testing.assert_allclose(expectation, kl, rtol=1e-4, atol=1e-5)


def test_unknown_estimator_is_an_error():
    with pytest.raises(ValueError, match="kl_estimator"):
        losses.kl_estimate(np.zeros(2), np.zeros(2), "k4")
