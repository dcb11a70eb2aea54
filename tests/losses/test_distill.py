"""distill_kl: golden parity with teacher-vocab truncation, and KL properties."""
import jax
import numpy as np
import pytest
from hypothesis import given

import losses
from tests.losses.helpers import assert_close, floats, masks, pad_columns

B, T, V = 2, 4, 6
_kd = jax.jit(jax.value_and_grad(losses.distill_kl))


def test_distill_kl_golden(golden):
    g = golden("loss_distill_kl")                  # teacher has 3 extra vocab columns that must be cut off
    assert g["teacher_logits"].shape[-1] > g["student_logits"].shape[-1]
    loss, grad = _kd(g["student_logits"], g["teacher_logits"], g["mask"],
                                                       g["temperature"])
    assert_close(loss, g["loss"])
    assert_close(grad, g["grad_student"])


@given(floats((B, T, V)), floats((B, T, V)), floats((B, T, 3), -1e3, 1e3), masks((B, T)))
def test_extra_teacher_columns_are_ignored(student, teacher, extra, m):
    base = _kd(student, teacher, m, 1.5)
    wide = _kd(student, np.concatenate([teacher, extra], -1), m, 1.5)
    np.testing.assert_allclose(wide[0], base[0], rtol=1e-6)
    np.testing.assert_allclose(wide[1], base[1], rtol=1e-6, atol=1e-9)


@given(floats((B, T, V)), floats((B, T, V)), masks((B, T)))
def test_kl_is_nonnegative_zero_at_equality_and_scaled_by_t2(student, teacher, m):
    assert _kd(student, teacher, m, 1.5)[0] >= -1e-6
    assert abs(_kd(student, student, m, 1.5)[0]) < 1e-5
    # T^2 * KL(softmax(x/T)) at T = 2 equals 4 * KL at T = 1 of the logits halved
    np.testing.assert_allclose(_kd(student, teacher, m, 2.0)[0], 4 * _kd(student / 2, teacher / 2, m, 1.0)[0],
                               rtol=1e-4, atol=1e-6)


@given(floats((B, T, V)), floats((B, T, V)), masks((B, T)), floats((B, T, V), -1e3, 1e3))
def test_masked_positions_and_padding_never_matter(student, teacher, m, junk):
    loss, grad = _kd(student, teacher, m, 1.5)
    keep = m[..., None] == 1
    loss2, grad2 = _kd(np.where(keep, student, junk), np.where(keep, teacher, -junk), m, 1.5)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    assert np.all(np.asarray(grad2)[m == 0] == 0)
    padded = losses.distill_kl(pad_columns(student, 2), pad_columns(teacher, 2), pad_columns(m, 2), 1.5)
    np.testing.assert_allclose(padded, loss, rtol=4e-6)     # a longer sum may round differently by an ulp or two


def test_teacher_gets_no_gradient():
    s, t = np.ones((1, 2, 3)), np.arange(6.0).reshape(1, 2, 3)
    assert np.all(jax.grad(losses.distill_kl, argnums=1)(s, t, np.ones((1, 2)), 1.0) == 0)


def test_smaller_teacher_vocab_is_an_error():
    with pytest.raises(ValueError, match="teacher vocab 2 < student vocab 3"):
        losses.distill_kl(np.zeros((1, 1, 3)), np.zeros((1, 1, 2)), np.ones((1, 1)), 1.0)
