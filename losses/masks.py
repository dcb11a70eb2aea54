"""Masks and reductions: the one place where padding is kept out of every loss, and batch whitening.

A mask is 1 (or a weight) where a position counts and 0 where it does not. Masked positions must never leak into a
value or a gradient, even when they hold inf or NaN (a pad token's log-prob can underflow), so values are zeroed with
`jnp.where` before they are weighted: `0 * inf` is NaN, `where(False, inf, 0)` is 0 and has a zero gradient.
"""
import jax.numpy as jnp

from losses.shapes import Array, ArrayLike, Int


def zero_masked(x, mask):
    """x where mask != 0, else 0 (gradient to masked positions is exactly 0)."""
    return jnp.where(mask != 0, x, jnp.zeros((), x.dtype))


def safe_divide(num, den):
    """num / den, and 0 where den == 0 (an all-masked row or batch contributes nothing instead of NaN)."""
    den = jnp.asarray(den)
    empty = den == 0
    return jnp.where(empty, 0.0, num / jnp.where(empty, jnp.ones((), den.dtype), den))


def masked_sum(x, mask, axis=None):
    """sum(x * mask), with masked positions zeroed first."""
    x = jnp.asarray(x, jnp.float32)
    return jnp.sum(zero_masked(x, mask) * mask, axis=axis)


def masked_mean(x, mask, axis=None):
    """sum(x * mask) / sum(mask) over `axis` (all axes by default); 0 where the mask is all zero."""
    return safe_divide(masked_sum(x, mask, axis), jnp.sum(jnp.asarray(mask, jnp.float32), axis=axis))


def completion_mask(completion_ids: Int[ArrayLike, "*batch R"], eos_id) -> Int[Array, "*batch R"]:
    """int32 [B, R]: 1 up to and including the first eos, 0 after it; a row without eos keeps every position.

    `cumsum(is_eos) - is_eos` counts the eos tokens strictly before each position, so the mask is where that is 0.
    Never inferred from the pad id: pad 0 may legitimately be sampled before the eos.
    """
    is_eos = (completion_ids == eos_id).astype(jnp.int32)                 # [B, R]
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos                      # [B, R]
    return (eos_before == 0).astype(jnp.int32)


def reduce_tokens(per_token, mask, loss_norm: str = "sequence", max_tokens: int | None = None):
    """The scalar loss of a per-token loss [B, R] under one of three normalisations.

    - 'sequence' (the reference, GRPO paper): mean over rows of each row's masked mean, `mean_i sum_t l m / sum_t m`;
      long and short completions weigh the same, so per token a long one counts less (the length bias Dr. GRPO notes).
    - 'token' (DAPO): `sum l m / sum m`, every completion token in the batch weighs the same.
    - 'constant' (Dr. GRPO): `sum l m / (B * max_tokens)` with a fixed token budget (default: the padded width R),
      unbiased in length; pass `max_tokens` to make it independent of how the batch was padded.
    """
    B, R = per_token.shape[0], per_token.shape[-1]
    if loss_norm == "sequence":
        return jnp.mean(masked_mean(per_token, mask, axis=-1))
    if loss_norm == "token":
        return masked_mean(per_token, mask)
    if loss_norm == "constant":
        return masked_sum(per_token, mask) / (B * (R if max_tokens is None else max_tokens))
    raise ValueError(f"losses/masks.py: loss_norm={loss_norm!r}; expected 'sequence', 'token' or 'constant'")


def whiten(a, eps: float = 1e-8):
    """(a - mean(a)) / (std(a) + eps) over a batch [N] (std unbiased, as torch.std), 0 where every entry is equal:
    the mean of equal floats is not exact, and that rounding divided by a std of ~0 + eps would be a signal.
    A batch of one is returned centred (to 0): its std is undefined."""
    a = jnp.asarray(a, jnp.float32)
    if a.shape[0] < 2:
        return a - jnp.mean(a)
    centred = (a - jnp.mean(a)) / (jnp.std(a, ddof=1) + eps)
    return jnp.where(jnp.max(a) == jnp.min(a), 0.0, centred)
