"""MiniMind-3's group policy objectives: CISPO (MiniMax-M1, 2025) and GRPO's clipped surrogate, over G sampled
completions per prompt with group-normalised advantages.

    A_i    = (r_i - mean_group) / (std_group + eps)             population std; no clip, no batch re-normalisation
    ratio  = exp(logp - old_logp)
    CISPO  l_t = -( sg(min(ratio, eps_high)) * A * logp - beta * k3 )     every token keeps a gradient; the ratio
                                                                          only weighs it, capped from above
    GRPO   l_t = -( min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) - beta * k3 )
    loss   = mean over rows of the row's masked mean of l_t

k3 = exp(ref - logp) - (ref - logp) - 1 (losses.kl). `old_logps=None` means on-policy (one update per rollout):
ratio is then exp(logp - sg(logp)), 1 in value, and both objectives reduce to the policy gradient plus the KL term.
"""
import jax
import jax.numpy as jnp

from losses.kl import kl_k3
from losses.masks import masked_mean, masked_sum, safe_divide, zero_masked
from losses.shapes import Array, ArrayLike, Float, Int, Shaped

LOSS_TYPES = ("cispo", "grpo")


def group_advantages(rewards: Float[ArrayLike, "N"], num_generations: int, eps: float = 1e-4) -> Float[Array, "N"]:
    """[N] rewards, G consecutive completions per prompt -> [N] advantages (r - mean) / (std + eps), std over the
    group with ddof 0. A group of equal rewards gets exactly 0 (its float mean need not be exact)."""
    G = num_generations
    if jnp.size(rewards) % G:
        raise ValueError(f"losses/cispo.py: {jnp.size(rewards)} rewards do not split into groups of {G}")
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, G)                              # [B, G]
    a = (r - jnp.mean(r, axis=1, keepdims=True)) / (jnp.std(r, axis=1, keepdims=True) + eps)
    return jnp.where(jnp.all(r == r[:, :1], axis=1, keepdims=True), 0.0, a).reshape(-1)


def through_first_eos(completion_ids: Int[ArrayLike, "N R"], valid: Shaped[ArrayLike, "N R"],
                      eos_id: int) -> Int[Array, "N R"]:
    """int32 [N, R]: the valid positions up to and including the first eos among them (all valid ones if none)."""
    valid = jnp.asarray(valid) != 0
    is_eos = (jnp.asarray(completion_ids) == eos_id) & valid
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos                                # eos strictly before t
    return (valid & (eos_before == 0)).astype(jnp.int32)


def spans_through_first_eos(target_ids: Int[ArrayLike, "N T"], mask: Shaped[ArrayLike, "N T"],
                            eos_id: int) -> Int[Array, "N T"]:
    """int32 [N, T]: each run of consecutive masked positions (a generated turn) cut after its first eos.

    A multi-turn rollout trains every turn through the eos that ended it; a token after an eos inside one run was
    never meant to be sampled. With one run per row this is `through_first_eos`."""
    m = jnp.asarray(mask) != 0
    is_eos = (jnp.asarray(target_ids) == eos_id) & m
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos                                # [N, T], non-decreasing
    starts = m & ~jnp.pad(m, ((0, 0), (1, 0)))[:, :-1]                               # first position of each run
    at_start = jax.lax.cummax(jnp.where(starts, eos_before, 0), axis=1)             # eos count when the run began
    return (m & (eos_before == at_start)).astype(jnp.int32)


def per_token_loss(logps: Float[ArrayLike, "N R"], old_logps: Float[ArrayLike, "N R"] | None,
                   ref_logps: Float[ArrayLike, "N R"], advantages: Float[ArrayLike, "N"], *, beta: float,
                   loss_type: str = "cispo", epsilon: float = 0.2, epsilon_high: float = 5.0):
    """(l_t [N, R], ratio [N, R], k3 [N, R]) of the module doc; old and reference log-probs are constants."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"losses/cispo.py: loss_type={loss_type!r}; expected one of {LOSS_TYPES}")
    logps = jnp.asarray(logps, jnp.float32)
    old = jax.lax.stop_gradient(logps if old_logps is None else jnp.asarray(old_logps, jnp.float32))
    ref = jax.lax.stop_gradient(jnp.asarray(ref_logps, jnp.float32))
    A = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]        # [N, 1]
    ratio = jnp.exp(logps - old)
    kl = kl_k3(logps, ref)
    if loss_type == "cispo":
        surrogate = jax.lax.stop_gradient(jnp.minimum(ratio, epsilon_high)) * A * logps
    else:
        surrogate = jnp.minimum(ratio * A, jnp.clip(ratio, 1 - epsilon, 1 + epsilon) * A)
    return -(surrogate - beta * kl), ratio, kl


def group_policy_loss(logps: Float[ArrayLike, "N R"], old_logps: Float[ArrayLike, "N R"] | None,
                      ref_logps: Float[ArrayLike, "N R"], advantages: Float[ArrayLike, "N"],
                      mask: Shaped[ArrayLike, "N R"], *, beta: float = 0.1, loss_type: str = "cispo",
                      epsilon: float = 0.2, epsilon_high: float = 5.0, skip_empty_rows: bool = False,
                      return_metrics: bool = False):
    """The scalar loss: per row sum(l_t m) / max(sum m, 1), then the mean over rows — over every row (GRPO), or
    over the rows with a masked token (`skip_empty_rows`, agent rollouts where a row may train on nothing).
    Masked positions never reach the value or the gradient, whatever they hold. With `return_metrics` also
    {'kl', 'completion_len', 'clip_frac' (tokens whose weight the cap or the clip changed), 'advantage_mean',
    'advantage_std'}."""
    m = jnp.asarray(mask, jnp.float32)
    logps = zero_masked(jnp.asarray(logps, jnp.float32), m)
    clean = lambda x: None if x is None else zero_masked(jnp.asarray(x, jnp.float32), m)
    l_t, ratio, kl = per_token_loss(logps, clean(old_logps), clean(ref_logps), advantages, beta=beta,
                                    loss_type=loss_type, epsilon=epsilon, epsilon_high=epsilon_high)
    counts = jnp.sum(m, axis=-1)                                                     # [N]
    rows = masked_sum(l_t, m, axis=-1) / jnp.maximum(counts, 1.0)                    # [N]
    if skip_empty_rows:
        nonempty = (counts > 0).astype(jnp.float32)
        loss = safe_divide(jnp.sum(rows * nonempty), jnp.sum(nonempty))
    else:
        loss = jnp.mean(rows)
    if not return_metrics:
        return loss
    clipped = ratio > epsilon_high if loss_type == "cispo" else jnp.abs(ratio - 1) > epsilon
    A = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    metrics = {"kl": masked_mean(jax.lax.stop_gradient(kl), m), "completion_len": jnp.mean(counts),
               "clip_frac": masked_mean(clipped.astype(jnp.float32), m), "advantage_mean": jnp.mean(A),
               "advantage_std": jnp.std(A)}
    return loss, metrics
