"""PPO as the reference runs it: sequence-level clipped surrogate, advantage = reward - value (no GAE), value loss
and a KL-to-reference term in the loss (Schulman et al., 2017; Ouyang et al., 2022)."""
import jax
import jax.numpy as jnp

from losses.shapes import ArrayLike, Float


def ppo_loss(actor_logp: Float[ArrayLike, "B"], old_logp: Float[ArrayLike, "B"], ref_logp: Float[ArrayLike, "B"],
             values: Float[ArrayLike, "B"], rewards: Float[ArrayLike, "B"], clip_eps=0.1, vf_coef=0.5, kl_coef=0.02):
    """(total, metrics) from sequence log-probs [B] (sums over each completion) of actor, old actor and reference,
    critic values [B] and rewards [B]:

        A = r - stop_grad(V),  ratio = exp(actor - old)
        policy = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))
        value  = mean((V - r)^2),   kl_ref = mean(actor - ref)
        total  = policy + vf_coef * value + kl_coef * kl_ref

    Old and reference log-probs are constants (no gradient). Metrics: policy_loss, value_loss, kl_ref, clip_frac
    (fraction of sequences where the clipped term is the smaller one, i.e. the clip removed their gradient),
    approx_kl (mean (actor - old)^2 / 2, the k2 estimate of KL(old || actor)), ratio_mean, advantage_mean.
    """
    actor = jnp.asarray(actor_logp, jnp.float32)
    old = jax.lax.stop_gradient(jnp.asarray(old_logp, jnp.float32))
    ref = jax.lax.stop_gradient(jnp.asarray(ref_logp, jnp.float32))
    values, rewards = jnp.asarray(values, jnp.float32), jnp.asarray(rewards, jnp.float32)

    A = rewards - jax.lax.stop_gradient(values)                                      # [B]
    log_ratio = actor - old
    ratio = jnp.exp(log_ratio)                                                        # [B]
    unclipped, clipped = ratio * A, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * A
    policy_loss = -jnp.mean(jnp.minimum(unclipped, clipped))
    value_loss = jnp.mean(jnp.square(values - rewards))
    kl_ref = jnp.mean(actor - ref)
    total = policy_loss + vf_coef * value_loss + kl_coef * kl_ref
    metrics = {"policy_loss": policy_loss, "value_loss": value_loss, "kl_ref": kl_ref,
               "clip_frac": jnp.mean((clipped < unclipped).astype(jnp.float32)),
               "approx_kl": jnp.mean(0.5 * jnp.square(log_ratio)), "ratio_mean": jnp.mean(ratio),
               "advantage_mean": jnp.mean(A)}
    return total, metrics
