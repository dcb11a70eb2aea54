"""Token-level PPO with generalised advantage estimation (Schulman et al., 2016 and 2017), as MiniMind-3 runs it.

The scalar reward of a completion is placed on its last token; a critic's values V_t (the state before response
token t) give TD errors, and GAE sums them backwards:

    delta_t = r_t + gamma V_{t+1} - V_t          V past the last token (and V_R) = 0
    A_t     = delta_t + gamma lam A_{t+1}        returns_t = A_t + V_t
    A      <- masked whitening of A over the batch

and each minibatch update minimises

    policy = masked mean of max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)) + kl_coef * masked mean k3(ref, logp)
    value  = 1/2 masked mean of max((V' - R)^2, (clip(V', V +- cliprange_value) - R)^2)
    total  = policy + vf_coef * value

with ratio = exp(logp - old_logp) against the rollout's log-probs. Arrays are [B, R] over response positions.
"""
import jax
import jax.numpy as jnp

from losses.kl import kl_k3
from losses.masks import masked_mean, zero_masked
from losses.shapes import Array, ArrayLike, Float, Int, Shaped


def response_lengths(completion_ids: Int[ArrayLike, "B R"], valid: Shaped[ArrayLike, "B R"],
                     eos_id: int) -> Int[Array, "B"]:
    """int32 [B]: the first eos index + 1, else the number of valid tokens; at least 1."""
    valid = jnp.asarray(valid) != 0
    is_eos = (jnp.asarray(completion_ids) == eos_id) & valid
    first = jnp.argmax(is_eos, axis=-1) + 1
    length = jnp.where(jnp.any(is_eos, axis=-1), first, jnp.sum(valid, axis=-1))
    return jnp.maximum(length, 1).astype(jnp.int32)


def policy_mask(lengths: Int[ArrayLike, "B"], valid: Shaped[ArrayLike, "B R"]) -> Float[Array, "B R"]:
    """float32 [B, R]: 1 where t < length and the position is valid."""
    valid = jnp.asarray(valid) != 0
    t = jnp.arange(valid.shape[-1])[None, :]
    return ((t < jnp.asarray(lengths)[:, None]) & valid).astype(jnp.float32)


def token_rewards(rewards: Float[ArrayLike, "B"], lengths: Int[ArrayLike, "B"], mask: Shaped[ArrayLike, "B R"]
                  ) -> Float[Array, "B R"]:
    """float32 [B, R]: each row's scalar reward at its last token (t = length - 1), 0 elsewhere; a row with no
    masked token gets nothing."""
    R = jnp.shape(mask)[-1]
    last = jax.nn.one_hot(jnp.asarray(lengths) - 1, R, dtype=jnp.float32)
    has_token = jnp.any(jnp.asarray(mask) != 0, axis=-1, keepdims=True)
    return jnp.where(has_token, last * jnp.asarray(rewards, jnp.float32)[:, None], 0.0)


def gae(rewards: Float[ArrayLike, "B R"], values: Float[ArrayLike, "B R"], gamma: float = 1.0, lam: float = 0.95):
    """(advantages, returns) float32 [B, R] by a backwards scan over the R positions; `values` already 0 past each
    row's end, and the value after the last position is 0."""
    r, v = jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32)
    v_next = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)            # V_{t+1}, V_R = 0
    delta = r + gamma * v_next - v                                                     # [B, R]

    def back(carry, d):                                                                # carry A_{t+1} [B]
        a = d + gamma * lam * carry
        return a, a
    _, adv = jax.lax.scan(back, jnp.zeros_like(delta[:, 0]), delta.T, reverse=True)   # [R, B]
    adv = adv.T
    return adv, adv + v


def masked_whiten(x: Float[ArrayLike, "B R"], mask: Shaped[ArrayLike, "B R"], eps: float = 1e-8) -> Float[Array, "B R"]:
    """(x - mean) / sqrt(var + eps) * mask, with the masked mean and the masked population variance."""
    m = jnp.asarray(mask, jnp.float32)
    x = zero_masked(jnp.asarray(x, jnp.float32), m)
    mean = masked_mean(x, m)
    var = masked_mean(jnp.square(x - mean), m)
    return (x - mean) * jax.lax.rsqrt(var + eps) * m


def ppo_gae_loss(logps: Float[ArrayLike, "B R"], old_logps: Float[ArrayLike, "B R"],
                 ref_logps: Float[ArrayLike, "B R"], values: Float[ArrayLike, "B R"],
                 old_values: Float[ArrayLike, "B R"], advantages: Float[ArrayLike, "B R"],
                 returns: Float[ArrayLike, "B R"], mask: Shaped[ArrayLike, "B R"], *, clip_eps: float = 0.2,
                 cliprange_value: float = 0.2, vf_coef: float = 0.5, kl_coef: float = 0.02):
    """(total, metrics) of one minibatch: the module doc's loss. Metrics: policy_loss (with its KL term),
    value_loss, kl_ref (masked mean k3 to the reference), approx_kl (masked mean of (logp - old)^2 / 2, what
    early stopping reads), clipfrac (tokens with |ratio - 1| > eps). Everything but `logps` and `values` is a
    constant."""
    m = jnp.asarray(mask, jnp.float32)
    sg = lambda x: jax.lax.stop_gradient(zero_masked(jnp.asarray(x, jnp.float32), m))
    logps, values = zero_masked(jnp.asarray(logps, jnp.float32), m), zero_masked(jnp.asarray(values, jnp.float32), m)
    old, ref, v_old, A, R = sg(old_logps), sg(ref_logps), sg(old_values), sg(advantages), sg(returns)

    log_ratio = logps - old
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.maximum(-A * ratio, -A * jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps))
    kl_ref = masked_mean(kl_k3(logps, ref), m)
    policy = masked_mean(surrogate, m) + kl_coef * kl_ref
    v_clipped = v_old + jnp.clip(values - v_old, -cliprange_value, cliprange_value)
    value = 0.5 * masked_mean(jnp.maximum(jnp.square(values - R), jnp.square(v_clipped - R)), m)
    total = policy + vf_coef * value
    sg_ = jax.lax.stop_gradient
    metrics = {"policy_loss": policy, "value_loss": value, "kl_ref": sg_(kl_ref),
               "approx_kl": sg_(masked_mean(0.5 * jnp.square(log_ratio), m)),
               "clipfrac": sg_(masked_mean((jnp.abs(ratio - 1) > clip_eps).astype(jnp.float32), m))}
    return total, metrics
