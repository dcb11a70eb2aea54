"""Token log-probabilities and the masked cross-entropies of pretraining, SFT, LoRA and reasoning distillation."""
import jax
import jax.numpy as jnp

from losses.masks import safe_divide, zero_masked
from losses.shapes import Array, ArrayLike, Float, Int, Scalar, Shaped


def token_logprobs(logits: Float[ArrayLike, "B T V"], ids: Int[ArrayLike, "B T"]) -> Float[Array, "B T"]:
    """log softmax(logits)[ids] in float32: [B, T, V], [B, T] -> [B, T].

    Gathers one logit per position and subtracts the logsumexp instead of materialising log_softmax [B, T, V].
    """
    logits = jnp.asarray(logits, jnp.float32)                                        # [B, T, V]
    picked = jnp.take_along_axis(logits, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]   # [B, T]
    return picked - jax.nn.logsumexp(logits, axis=-1)                                 # [B, T]


def masked_ce(logits: Float[ArrayLike, "B T V"], labels: Int[ArrayLike, "B T"], mask: Shaped[ArrayLike, "B T"],
              ignore_id: int | None = None) -> Scalar:
    """sum(CE * mask) / sum(mask) with CE = -log p(label): the pretrain / SFT objective (without the MoE aux loss).

    `ignore_id`: targets with this id add nothing to the sum but still count in sum(mask) — the reference's
    distillation CE (`ignore_index=0` over the mask's count)."""
    ce = -token_logprobs(logits, labels)                                              # [B, T]
    mask = jnp.asarray(mask, jnp.float32)
    weight = mask if ignore_id is None else mask * (labels != ignore_id)
    return safe_divide(jnp.sum(zero_masked(ce, weight) * weight), jnp.sum(mask))


def reason_ce(logits: Float[ArrayLike, "B T V"], labels: Int[ArrayLike, "B T"], mask: Shaped[ArrayLike, "B T"],
              special_ids, weight=10.0, *, respect_mask: bool = False) -> Scalar:
    """The reasoning-distillation CE: weight `weight` on every target that is one of `special_ids` (the tokens of
    <think>, </think>, <answer>, </answer>), mask weight elsewhere, normalised by the *original* mask sum:

        sum(CE * w) / sum(mask),   w = weight if label in special_ids else mask

    As the reference, a special label gets its weight even where the mask is 0 (with the reference BPE, ids like `<`
    can sit in the padding); `respect_mask=True` keeps masked positions at 0.
    """
    ce = -token_logprobs(logits, labels)                                              # [B, T]
    mask = jnp.asarray(mask, jnp.float32)
    special = jnp.any(labels[..., None] == jnp.asarray(special_ids).reshape(-1), axis=-1)   # [B, T]
    if respect_mask:
        special = special & (mask != 0)
    w = jnp.where(special, jnp.float32(weight), mask)                                # [B, T]
    return safe_divide(jnp.sum(zero_masked(ce, w) * w), jnp.sum(mask))
