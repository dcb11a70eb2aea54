"""Knowledge distillation: the KL from a (frozen) teacher to the student on temperature-softened distributions."""
import jax
import jax.numpy as jnp

from losses.masks import masked_mean
from losses.shapes import ArrayLike, Float, Scalar, Shaped


def distill_kl(student_logits: Float[ArrayLike, "B T V"], teacher_logits: Float[ArrayLike, "B T Vt"],
               mask: Shaped[ArrayLike, "B T"], temperature=1.0) -> Scalar:
    """T^2 * KL(p_t || p_s) per position, averaged over masked positions (Hinton et al., 2015):

        p = softmax(logits / T),  KL = sum_v p_t (log p_t - log p_s),  loss = T^2 * sum(KL * mask) / sum(mask)

    [B, T, V], [B, T, V_t >= V], [B, T] -> scalar. The teacher's extra vocabulary columns are cut to the student's V
    (the reference's rule); the teacher gets no gradient. The T^2 keeps gradient scale independent of T.
    """
    V, Vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if Vt < V:
        raise ValueError(f"losses/distill.py: teacher vocab {Vt} < student vocab {V}; the teacher must cover it")
    t = jax.lax.stop_gradient(jnp.asarray(teacher_logits[..., :V], jnp.float32)) / temperature   # [B, T, V]
    s = jnp.asarray(student_logits, jnp.float32) / temperature                                   # [B, T, V]
    log_pt, log_ps = jax.nn.log_softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)                                   # [B, T]
    return temperature ** 2 * masked_mean(kl, mask)
