"""Direct Preference Optimization (Rafailov et al., 2023) and its IPO and conservative (label-smoothed) variants."""
import jax
import jax.numpy as jnp

from losses.masks import masked_mean, masked_sum
from losses.shapes import Array, ArrayLike, Float, Shaped


def sequence_logps(token_logps: Float[ArrayLike, "B T"], mask: Shaped[ArrayLike, "B T"],
                   average: bool = True) -> Float[Array, "B"]:
    """[B, T] -> [B]: the masked mean of each row's log-probs (the reference, length-normalised) or their sum."""
    if average:
        return masked_mean(token_logps, mask, axis=-1)
    return masked_sum(token_logps, mask, axis=-1)


def dpo_loss(policy_logps: Float[ArrayLike, "B2 T"], ref_logps: Float[ArrayLike, "B2 T"], mask: Shaped[ArrayLike, "B2 T"],
             beta=0.1, *, average_log_prob: bool = True, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid", return_metrics: bool = False):
    """DPO on a batch whose rows are [chosen; rejected] (first half chosen, second half rejected):

        h = (pi_c - pi_r) - (ref_c - ref_r)        sequence log-probs: masked mean (reference) or sum
        sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (eps = label_smoothing, cDPO; 0 = DPO)
        ipo:     (h - 1 / (2 beta))^2                                        (Azar et al., 2023)

    averaged over pairs. [2B, T] token log-probs and mask -> scalar; the reference log-probs get no gradient.
    With `return_metrics` also the implicit rewards beta * (pi - ref): chosen, rejected, their margin and accuracy.
    """
    mask = jnp.asarray(mask, jnp.float32)
    pi = sequence_logps(policy_logps, mask, average_log_prob)                                  # [2B]
    ref = jax.lax.stop_gradient(sequence_logps(ref_logps, mask, average_log_prob))             # [2B]
    B = pi.shape[0] // 2
    pi_c, pi_r, ref_c, ref_r = pi[:B], pi[B:], ref[:B], ref[B:]
    h = (pi_c - pi_r) - (ref_c - ref_r)                                                        # [B]
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * jax.nn.log_sigmoid(beta * h) - label_smoothing * jax.nn.log_sigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = jnp.square(h - 1 / (2 * beta))
    else:
        raise ValueError(f"losses/dpo.py: loss_type={loss_type!r}; expected 'sigmoid' or 'ipo'")
    loss = jnp.mean(losses)
    if not return_metrics:
        return loss
    chosen, rejected = jax.lax.stop_gradient(beta * (pi_c - ref_c)), jax.lax.stop_gradient(beta * (pi_r - ref_r))
    return loss, {"chosen_reward": jnp.mean(chosen), "rejected_reward": jnp.mean(rejected),
                  "reward_margin": jnp.mean(chosen - rejected),
                  "reward_accuracy": jnp.mean((chosen > rejected).astype(jnp.float32))}
