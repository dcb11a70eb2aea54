"""The Bradley–Terry loss of a scalar reward model on preference pairs (Ouyang et al., 2022, InstructGPT)."""
import jax
import jax.numpy as jnp

from losses.shapes import ArrayLike, Float


def bradley_terry_loss(chosen_scores: Float[ArrayLike, "B"], rejected_scores: Float[ArrayLike, "B"], *, margin=0.0):
    """(loss, metrics) with loss = -mean(log sigmoid(s_c - s_r - margin)): [B], [B] -> scalar.

    P(chosen > rejected) = sigmoid(s_c - s_r) under Bradley–Terry; `margin` (a scalar or [B], Llama 2's rating
    margin) asks for a larger gap. Metrics: accuracy (fraction with s_c > s_r), margin (mean s_c - s_r),
    chosen_score, rejected_score.
    """
    c, r = jnp.asarray(chosen_scores, jnp.float32), jnp.asarray(rejected_scores, jnp.float32)
    gap = c - r                                                                       # [B]
    loss = -jnp.mean(jax.nn.log_sigmoid(gap - margin))
    gap = jax.lax.stop_gradient(gap)
    return loss, {"accuracy": jnp.mean((gap > 0).astype(jnp.float32)), "margin": jnp.mean(gap),
                  "chosen_score": jax.lax.stop_gradient(jnp.mean(c)),
                  "rejected_score": jax.lax.stop_gradient(jnp.mean(r))}
