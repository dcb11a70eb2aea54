"""token_logprobs, masked_ce, reason_ce: golden parity (values and gradients) and masking properties."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import losses
from tests.losses.helpers import assert_close, floats, masks, pad_columns

B, T, V = 2, 5, 7
SPECIAL = np.array([2, 5], np.int32)
_ce = jax.jit(jax.value_and_grad(losses.masked_ce))
_reason = jax.jit(jax.value_and_grad(losses.reason_ce), static_argnames="respect_mask")
labels_st = hnp.arrays(np.int32, (B, T), elements=st.integers(0, V - 1))


def test_masked_ce_golden(golden):
    g = golden("loss_masked_ce")
    loss, grad = _ce(g["logits"], g["labels"], g["mask"])
    assert_close(loss, g["loss"])
    assert_close(grad, g["grad_logits"])


def test_reason_ce_golden(golden):
    g = golden("loss_reason_ce")
    loss, grad = _reason(g["logits"], g["labels"], g["mask"], g["special_ids"], 10.0)
    assert_close(loss, g["loss"])
    assert_close(grad, g["grad_logits"])


@given(floats((B, T, V)), labels_st)
def test_token_logprobs_is_gathered_log_softmax(logits, labels):
    expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.token_logprobs(logits, labels), expected, rtol=1e-5, atol=1e-5)


def test_token_logprobs_bf16_logits_compute_in_float32():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, V)), jnp.bfloat16)
    lp = losses.token_logprobs(logits, jnp.zeros((B, T), jnp.int32))
    assert lp.dtype == jnp.float32


@given(floats((B, T, V)), labels_st, masks((B, T)), floats((B, T, V), -1e4, 1e4),
       hnp.arrays(np.int32, (B, T), elements=st.sampled_from([-100, 0, V - 1, V + 3])))
def test_masked_positions_never_matter(logits, labels, m, other_logits, other_labels):
    """Any logits and any label (even -100 or out of range) at masked positions: same loss, zero gradient there."""
    loss, grad = _ce(logits, labels, m)
    keep = m[..., None] == 1
    loss2, grad2 = _ce(np.where(keep, logits, other_logits), np.where(m == 1, labels, other_labels), m)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    assert np.all(np.asarray(grad2)[m == 0] == 0)
    np.testing.assert_allclose(np.asarray(grad2)[m == 1], np.asarray(grad)[m == 1], rtol=1e-6, atol=1e-9)


@given(floats((B, T, V)), labels_st, masks((B, T)))
def test_padding_extra_masked_positions_changes_nothing(logits, labels, m):
    k = 3
    for fn in (losses.masked_ce, lambda *a: losses.reason_ce(*a, SPECIAL, respect_mask=True)):
        base = fn(logits, labels, m)
        padded = fn(pad_columns(logits, k, 1.0), pad_columns(labels, k, 1), pad_columns(m, k, 0))
        np.testing.assert_allclose(padded, base, rtol=1e-6)


@given(floats((B, T, V)), hnp.arrays(np.int32, (B, T), elements=st.sampled_from([0, 1, 3, 4, 6])), masks((B, T)))
def test_reason_ce_without_special_targets_is_masked_ce(logits, labels, m):
    np.testing.assert_allclose(_reason(logits, labels, m, SPECIAL, 10.0)[0], _ce(logits, labels, m)[0], rtol=1e-6)


@given(floats((B, T, V)), labels_st, masks((B, T)))
def test_reason_ce_weights_special_targets(logits, labels, m):
    """sum(CE * w) / sum(mask) with w = 10 at special labels (even where masked: the reference) else mask."""
    ce = -np.asarray(losses.token_logprobs(logits, labels))
    w = np.where(np.isin(labels, SPECIAL), 10.0, m)
    np.testing.assert_allclose(_reason(logits, labels, m, SPECIAL, 10.0)[0], (ce * w).sum() / m.sum(), rtol=1e-5)
    w_masked = np.where(np.isin(labels, SPECIAL) & (m == 1), 10.0, m)
    np.testing.assert_allclose(_reason(logits, labels, m, SPECIAL, 10.0, respect_mask=True)[0],
                               (ce * w_masked).sum() / m.sum(), rtol=1e-5)


def test_all_masked_batch_is_zero_with_zero_gradient():
    logits = jnp.ones((B, T, V))
    loss, grad = _ce(logits, jnp.zeros((B, T), jnp.int32), jnp.zeros((B, T), jnp.int32))
    assert loss == 0 and np.all(np.asarray(grad) == 0)
