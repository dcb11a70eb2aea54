"""Per-token estimators of KL(pi || ref) from log-probs of tokens sampled from pi (Schulman, "Approximating KL
divergence", 2020). With log r = ref_logp - logp:

    k1 = -log r = logp - ref_logp              unbiased, high variance, can be negative
    k2 = (log r)^2 / 2                          biased, low variance, >= 0
    k3 = (r - 1) - log r = exp(ref - logp) - (ref - logp) - 1   unbiased, low variance, >= 0 (the reference's)

As a loss term k3's gradient is biased (it is an estimator of the value, not of the gradient); k1 in the loss gives the exact gradient of the KL in expectation
only through the score function, which these losses do not add, so k1 is offered for research comparisons.
"""
import jax.numpy as jnp

from losses.shapes import Array, ArrayLike, Float


def kl_k1(logp: Float[ArrayLike, "*s"], ref_logp: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """k1 = logp - ref_logp, [...] -> [...]."""
    return jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)


def kl_k2(logp: Float[ArrayLike, "*s"], ref_logp: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """k2 = (logp - ref_logp)^2 / 2."""
    return 0.5 * jnp.square(kl_k1(logp, ref_logp))


def kl_k3(logp: Float[ArrayLike, "*s"], ref_logp: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, and 0 only where logp == ref_logp.

    `expm1(d) - d` is the same number without the cancellation of `exp(d) - 1` near d = 0.
    """
    d = jnp.asarray(ref_logp, jnp.float32) - jnp.asarray(logp, jnp.float32)
    return jnp.expm1(d) - d


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp, ref_logp, estimator: str = "k3"):
    """The estimator named 'k1', 'k2' or 'k3' (Schulman's names), per token."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"losses/kl.py: kl_estimator={estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logp, ref_logp)
