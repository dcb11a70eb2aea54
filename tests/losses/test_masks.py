"""completion_mask, the masked reductions and whitening."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import losses
from losses.masks import reduce_tokens, safe_divide
from tests.losses.helpers import floats, masks

EOS = 2
_completion_mask = jax.jit(losses.completion_mask, static_argnums=1)


def test_completion_mask_golden(golden):
    g = golden("loss_grpo")
    np.testing.assert_array_equal(_completion_mask(g["completion_ids"], int(g["eos_id"])), g["completion_mask"])


@given(hnp.arrays(np.int32, (5, 9), elements=st.integers(0, 4)))
def test_completion_mask_is_prefix_through_first_eos(ids):
    m = np.asarray(_completion_mask(ids, EOS))
    assert m.dtype == np.int32
    for row, keep in zip(ids, m):
        eos = np.flatnonzero(row == EOS)
        length = eos[0] + 1 if eos.size else len(row)           # through the first eos; everything without one
        np.testing.assert_array_equal(keep, np.arange(len(row)) < length)


def test_completion_mask_ignores_pad_before_eos():
    """Pad id 0 sampled before the eos stays in the mask (never infer the mask from pad)."""
    np.testing.assert_array_equal(_completion_mask(np.array([[5, 0, 2, 0, 0]]), EOS), [[1, 1, 1, 0, 0]])


@given(floats((3, 6)), masks((3, 6)), hnp.arrays(np.float32, (3, 6), elements=st.sampled_from([np.inf, -np.inf,
                                                                                           np.nan])))
def test_masked_mean_ignores_masked_values_and_their_gradient(x, m, junk):
    poisoned = np.where(m == 1, x, junk)
    value, grad = jax.value_and_grad(losses.masked_mean)(poisoned, m)
    np.testing.assert_allclose(value, x[m == 1].mean(), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[m == 0] == 0)


def test_all_masked_is_zero_not_nan():
    x, m = jnp.ones((2, 3)), jnp.zeros((2, 3))
    assert losses.masked_mean(x, m) == 0 and np.all(losses.masked_mean(x, m, axis=-1) == 0)
    assert safe_divide(jnp.float32(1.0), jnp.float32(0.0)) == 0


@given(floats((4, 5)), masks((4, 5)))
def test_reduce_tokens_variants(per_token, m):
    sequence = np.mean([per_token[i][m[i] == 1].mean() for i in range(4)])
    np.testing.assert_allclose(reduce_tokens(per_token, m, "sequence"), sequence, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reduce_tokens(per_token, m, "token"), per_token[m == 1].mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reduce_tokens(per_token, m, "constant", max_tokens=7),
                               per_token[m == 1].sum() / (4 * 7), rtol=1e-5, atol=1e-5)


def test_reduce_tokens_rejects_unknown_norm():
    with pytest.raises(ValueError, match="loss_norm"):
        reduce_tokens(jnp.ones((2, 2)), jnp.ones((2, 2)), "tokens")


@given(floats((7,)))
def test_whiten_is_zero_mean_unit_std_or_zero(a):
    w = np.asarray(losses.whiten(a))
    if np.all(a == a[0]):
        assert np.all(w == 0)
    elif np.std(a, ddof=1) > 1e-3:
        np.testing.assert_allclose([w.mean(), w.std(ddof=1)], [0.0, 1.0], atol=1e-4)
