"""MiniMind-3's SFT-family objectives from the same losses, against the upstream trainers' own loss code: DPO with
summed sequence log-probs at beta 0.15, and distillation (alpha 0.5, T 1.5) with the teacher's extra vocabulary cut.
Tolerances: losses 1e-5 relative, gradients 1e-5 absolute."""
import jax
import jax.numpy as jnp
import numpy as np

import losses


def test_dpo_sums_the_sequence_logps(golden3):
    g = golden3("loss_dpo_distill")
    f = lambda lp: losses.dpo_loss(lp, g["dpo_ref_logps"], g["dpo_mask"], 0.15, average_log_prob=False)
    loss, grad = jax.value_and_grad(f)(jnp.asarray(g["dpo_policy_logps"]))
    np.testing.assert_allclose(loss, g["dpo_loss"], rtol=1e-5)
    np.testing.assert_allclose(grad, g["dpo_grad_policy"], atol=1e-5)


def test_distillation_loss(golden3):
    """The trainer's order: logits [B, T] predict labels shifted by one; -100 marks what is not trained."""
    g = golden3("loss_dpo_distill")
    labels = g["distill_labels"][:, 1:]
    mask = (labels != -100).astype(np.float32)                                   # [B, T-1]
    targets = np.where(labels == -100, 0, labels).astype(np.int32)
    teacher = jnp.asarray(g["distill_teacher_logits"][:, :-1])

    def parts(student):
        s = student[:, :-1]
        ce = losses.masked_ce(s, targets, mask)
        kl = losses.distill_kl(s, teacher, mask, 1.5)
        return 0.5 * ce + 0.5 * kl, (ce, kl)

    (loss, (ce, kl)), grad = jax.value_and_grad(parts, has_aux=True)(jnp.asarray(g["distill_student_logits"]))
    np.testing.assert_allclose(ce, g["distill_ce"], rtol=1e-5)
    np.testing.assert_allclose(kl, g["distill_kl_term"], rtol=1e-5)
    np.testing.assert_allclose(loss, g["distill_loss"], rtol=1e-5)
    np.testing.assert_allclose(grad, g["distill_grad_student_logits"], atol=1e-5)
