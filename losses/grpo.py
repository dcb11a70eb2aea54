"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) as the reference runs it, with the
normalisation variants of Dr. GRPO (Liu et al., 2025) and DAPO (Yu et al., 2025) as keywords."""
import jax
import jax.numpy as jnp

from losses.kl import kl_estimate
from losses.masks import masked_mean, reduce_tokens, whiten, zero_masked
from losses.shapes import ArrayLike, Float, Shaped


def grpo_advantages(rewards: Float[ArrayLike, "N"], num_generations: int, *, scale_rewards: bool = True, batch_normalize: bool = True,
                    eps: float = 1e-4, clip: float = 10.0):
    """[B*G] rewards, G consecutive completions per prompt -> [B*G] advantages:

        A = clip((r - mean_group) / (std_group + eps), -clip, clip)     std unbiased (n - 1), as torch.std
        A = (A - mean(A)) / (std(A) + 1e-8)                             over the whole batch (unbiased)

    `scale_rewards=False` drops the group std (Dr. GRPO); `batch_normalize=False` drops the second line.
    A group whose rewards are all equal gets exactly 0: its mean is not exact in float, and dividing
    that rounding noise by a std of ~0 + eps would turn it into a learning signal.
    """
    G = num_generations
    if jnp.size(rewards) % G:
        raise ValueError(f"losses/grpo.py: {jnp.size(rewards)} rewards do not split into groups of {G} generations")
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, G)                              # [B, G]
    a = r - jnp.mean(r, axis=1, keepdims=True)
    if scale_rewards and G > 1:                                                       # one sample has no std
        a = a / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
    degenerate = jnp.all(r == r[:, :1], axis=1, keepdims=True)                        # [B, 1]
    a = jnp.clip(jnp.where(degenerate, 0.0, a), -clip, clip).reshape(-1)             # [B*G]
    return whiten(a) if batch_normalize else a


def grpo_loss(logps: Float[ArrayLike, "N R"], ref_logps: Float[ArrayLike, "N R"], advantages: Float[ArrayLike, "N"],
              completion_mask: Shaped[ArrayLike, "N R"], beta=0.02, *, kl_estimator: str = "k3",
              loss_norm: str = "sequence", max_tokens: int | None = None, return_metrics: bool = False):
    """Per token `-(ratio * A - beta * KL)` with ratio = exp(logp - stop_grad(logp)) (1 in value: one update per
    rollout, so it only carries the policy gradient A * grad logp), then reduced by `loss_norm`:
    'sequence' (reference: masked mean per completion, mean over completions), 'token' or 'constant' (see
    masks.reduce_tokens). [N, R] log-probs of the completion tokens, [N] advantages, [N, R] mask -> scalar.
    KL is per token between policy and frozen reference, `kl_estimator` 'k3' (reference) or 'k1'/'k2'.
    With `return_metrics` also {'kl': token-mean KL, 'completion_len', 'advantage_mean', 'advantage_std'}.
    """
    m = jnp.asarray(completion_mask, jnp.float32)
    logps = zero_masked(jnp.asarray(logps, jnp.float32), m)                          # [N, R]
    ref_logps = jax.lax.stop_gradient(zero_masked(jnp.asarray(ref_logps, jnp.float32), m))
    A = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]          # [N, 1]
    ratio = jnp.exp(logps - jax.lax.stop_gradient(logps))                             # [N, R], == 1
    kl = kl_estimate(logps, ref_logps, kl_estimator)                                  # [N, R]
    loss = reduce_tokens(-(ratio * A - beta * kl), m, loss_norm, max_tokens)
    if not return_metrics:
        return loss
    return loss, rl_metrics(kl, m, advantages)


def rl_metrics(kl, completion_mask, advantages):
    """What the policy-gradient stages log besides the loss."""
    kl, A = jax.lax.stop_gradient(kl), jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    return {"kl": masked_mean(kl, completion_mask), "completion_len": jnp.mean(jnp.sum(completion_mask, axis=-1)),
            "advantage_mean": jnp.mean(A), "advantage_std": jnp.std(A)}
