"""Scaled dot-product attention for every backend, behind one choice (`choose`).

Three implementations of the same function softmax(q k^T / sqrt(HD) + mask) v, GQA without repeated keys:

    grouped  the query heads that share a kv head stacked along the query axis, a hand-written backward and, for
             causal self-attention, query blocks that skip most of the masked upper triangle: the fastest on
             XLA:CPU, and the only one with this library's dropout masks (so any backend trains with attention
             dropout through it)
    cudnn    cuDNN's fused flash attention (jax.nn.dot_product_attention, implementation="cudnn"): NVIDIA GPUs,
             bf16/fp16 operands, head_dim a multiple of 8
    xla      jax.nn.dot_product_attention(implementation="xla"): every other accelerator case (fp32 on GPU, TPU);
             runs on CPU too, so the accelerator code path minus the cuDNN kernel is testable there

Masks. Causal self-attention (no cache) passes `is_causal` plus a boolean key mask [B, 1, 1, S] to the fused
kernels; a cached forward (prefill, decode) passes the full boolean mask [B, 1, T, S] built from the absolute
positions. The grouped path adds the reference's float32 bias (-inf future, -1e9 padding). Rows of padding
queries differ between paths (they see only masked keys; their outputs are never used), real rows agree.

The KV cache stores keys in the layout its implementation reads without a copy: [B, KV, S, HD] for grouped,
[B, S, KV, HD] for the fused kernels (`cache_layout`); any implementation reads either (with a transpose).
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from minimind_jax import dots

F32 = jnp.float32
IMPLS = ("grouped", "xla", "cudnn")

# Force one implementation everywhere ("grouped", "xla" or "cudnn"), e.g. to test an accelerator path on CPU; None
# chooses by backend. Read when a function is traced: set it before jitting. MINIMIND_ATTENTION sets its default.
IMPL: str | None = os.environ.get("MINIMIND_ATTENTION") or None


def choose(dtype, head_dim: int, dropout: bool = False, backend: str | None = None) -> str:
    """The attention implementation for this backend (jax.default_backend() unless given), compute dtype and
    head_dim; `dropout`: attention dropout is on (training with cfg.dropout > 0). IMPL, when set, wins."""
    if IMPL is not None:
        if IMPL not in IMPLS:
            raise ValueError(f"attention.IMPL {IMPL!r}: choose one of {IMPLS}")
        return IMPL
    backend = backend or jax.default_backend()
    if backend == "cpu" or dropout:              # neither fused kernel draws this library's dropout masks
        return "grouped"
    if backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 \
            and head_dim <= 128:
        return "cudnn"
    return "xla"


def cache_layout(impl: str) -> str:
    """'BNSH' ([B, KV, S, HD], the grouped path's) or 'BSNH' ([B, S, KV, HD], the fused kernels')."""
    return "BNSH" if impl == "grouped" else "BSNH"


@struct.dataclass
class Mask:
    """Which keys each query may see, in the form `impl` reads, built once per forward pass."""
    bias: jax.Array | None          # grouped: additive float32 [B|1, T, S]
    allowed: jax.Array | None       # fused: bool [B, 1, 1, S] (with causal) or [B, 1, T, S]; None: all keys
    causal: bool = struct.field(pytree_node=False, default=False)   # fused: queries are keys 0..T-1, causal
    impl: str = struct.field(pytree_node=False, default="grouped")


def attention_bias(positions, key_mask, key_length: int):
    """Additive float32 bias [B, T, S]: -inf on future keys (causal), -1e9 on padded keys (the reference's values).

    Every query may see its own key, so no row is all -inf.
    """
    key_positions = lax.iota(jnp.int32, key_length)                          # [S]
    causal = jnp.where(key_positions[None, :] <= positions[:, None], 0.0, -jnp.inf).astype(F32)   # [T, S]
    if key_mask is None:
        return causal[None]                                                  # [1, T, S]
    padding = jnp.where(key_mask > 0, 0.0, -1e9).astype(F32)                 # [B, S]
    return causal[None] + padding[:, None, :]                                # [B, T, S]


def make_mask(impl: str, positions, key_mask, key_length: int, cached: bool) -> Mask:
    """positions int32 [T] (absolute), key_mask int [B, S] (1 real) or None, S = key_length; `cached`: the keys
    are a KV cache's S slots rather than the queries' own T positions."""
    if impl == "grouped":
        return Mask(attention_bias(positions, key_mask, key_length), None, not cached, impl)
    real = None if key_mask is None else (key_mask > 0)[:, None, None, :]   # [B, 1, 1, S]
    if not cached:
        return Mask(None, real, True, impl)
    visible = (lax.iota(jnp.int32, key_length)[None, :] <= positions[:, None])[None, None]   # [1, 1, T, S]
    return Mask(None, visible if real is None else visible & real, False, impl)


# ---- grouped: the CPU path ---------------------------------------------------------------------------------------

@jax.custom_vjp
def grouped_attention(q, k, v, bias, dropout_mask):
    """softmax(q k^T + bias) v per kv group: q [B, KV, R*T, HD] (pre-scaled), k/v [B, KV, S, HD], bias [B|1, T, S],
    dropout_mask None or [B, KV, R*T, S] of 0 and 1/keep -> [B, KV, R*T, HD].

    The R = heads/kv_heads query heads that share a kv head are stacked along the query axis, so both products are
    plain batched matmuls with no repeated keys (faster than a 5-D einsum). Scores and softmax are
    float32; products take the operands' dtype and accumulate in float32.
    """
    return _attention_fwd(q, k, v, bias, dropout_mask)[0]


def _softmax_probs(q, k, bias):
    B, KV, RT, _ = q.shape
    T, S = bias.shape[-2], k.shape[2]
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=F32)              # [B, KV, R*T, S]
    scores = scores.reshape(B, KV, RT // T, T, S) + bias[:, None, None]
    scores = scores - lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    e = jnp.exp(scores)
    return (e / jnp.sum(e, axis=-1, keepdims=True)).reshape(B, KV, RT, S)


def _attention_fwd(q, k, v, bias, dropout_mask):
    probs = _softmax_probs(q, k, bias)                                                     # f32 [B, KV, R*T, S]
    kept = probs if dropout_mask is None else probs * dropout_mask
    out = jnp.einsum("bkqs,bksd->bkqd", kept.astype(v.dtype), v, preferred_element_type=F32).astype(q.dtype)
    return out, (q, k, v, probs, dropout_mask, out)


def _attention_bwd(res, d_out):
    """The softmax backward without materialising its Jacobian: dS = P * (dP - rowsum(dO * O)).

    rowsum(dO * O) equals rowsum(P * dP) (dropout included), a [.., R*T, 1] reduction instead of [.., R*T, S].
    Hand-written because XLA's autodiff of the softmax takes ~2x longer on CPU.
    """
    q, k, v, probs, dropout_mask, out = res
    cd = q.dtype
    kept = probs if dropout_mask is None else probs * dropout_mask
    d_v = dots.tn(kept.astype(cd), d_out).astype(v.dtype)                                # [B, KV, S, HD]
    d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out, v, preferred_element_type=F32)         # [B, KV, R*T, S]
    if dropout_mask is not None:
        d_probs = d_probs * dropout_mask
    row = jnp.sum(d_out.astype(F32) * out.astype(F32), axis=-1, keepdims=True)            # [B, KV, R*T, 1]
    d_scores = (probs * (d_probs - row)).astype(cd)
    d_q = jnp.einsum("bkqs,bksd->bkqd", d_scores, k, preferred_element_type=F32).astype(q.dtype)
    d_k = dots.tn(d_scores, q).astype(k.dtype)
    return d_q, d_k, d_v, None, None


grouped_attention.defvjp(_attention_fwd, _attention_bwd)


def query_blocks(T: int) -> int:
    """Query blocks for causal attention over T positions: 3 skip 1/3 of the masked work at the reference's 340
    (fwd+bwd ~30% faster on CPU than one block, more blocks lose it again to smaller products); short sequences
    gain nothing."""
    return 3 if T >= 192 else 1


def causal_attention(q, k, v, bias, dropout_mask, blocks: int):
    """grouped_attention when the keys are the queries' own T positions (no cache), in `blocks` query blocks:
    block [s, e) attends only to keys [0, e), so most of the upper triangle that the causal mask discards is never
    computed. Exactly the same function: the skipped keys have bias -inf for every query of the block.

    q [B, KV, R*T, HD], k/v [B, KV, T, HD], bias [B|1, T, T], dropout_mask None or [B, KV, R*T, T].
    """
    if blocks == 1:
        return grouped_attention(q, k, v, bias, dropout_mask)
    B, KV, RT, HD = q.shape
    T = k.shape[2]
    R = RT // T
    edges = np.linspace(0, T, blocks + 1).astype(int)
    q5 = q.reshape(B, KV, R, T, HD)
    outs = []
    for s, e in zip(edges[:-1], edges[1:]):
        qb = q5[:, :, :, s:e].reshape(B, KV, R * (e - s), HD)
        mb = None if dropout_mask is None else dropout_mask.reshape(B, KV, R, T, T)[:, :, :, s:e, :e].reshape(
            B, KV, R * (e - s), e)
        ob = grouped_attention(qb, k[:, :, :e], v[:, :, :e], bias[:, s:e, :e], mb)       # [B, KV, R*(e-s), HD]
        outs.append(ob.reshape(B, KV, R, e - s, HD))
    return jnp.concatenate(outs, axis=3).reshape(B, KV, RT, HD)


def _grouped(q, k, v, mask: Mask, kv_layout: str, dropout_mask):
    """q [B, T, NH, HD], k/v in kv_layout -> [B, T, NH, HD]."""
    B, T, NH, HD = q.shape
    if kv_layout == "BSNH":
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)             # [B, KV, S, HD]
    KV = k.shape[1]
    qg = q.transpose(0, 2, 1, 3).reshape(B, KV, (NH // KV) * T, HD) * (1 / math.sqrt(HD))   # heads sharing a kv head
    if mask.causal:
        out = causal_attention(qg, k, v, mask.bias, dropout_mask, query_blocks(T))
    else:
        out = grouped_attention(qg, k, v, mask.bias, dropout_mask)                         # [B, KV, R*T, HD]
    return out.reshape(B, NH, T, HD).transpose(0, 2, 1, 3)


# ---- fused: accelerators -----------------------------------------------------------------------------------------

def _fused(q, k, v, mask: Mask, kv_layout: str, impl: str):
    """jax.nn.dot_product_attention in its BTNH layout: q [B, T, NH, HD], k/v [B, S, KV, HD] (GQA: fewer kv heads,
    never repeated). cuDNN rejects some shapes when tracing (odd lengths with a mask while training, big head
    dims): those take the XLA implementation."""
    if kv_layout == "BNSH":
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    call = lambda implementation: jax.nn.dot_product_attention(
        q, k.astype(q.dtype), v.astype(q.dtype), mask=mask.allowed, is_causal=mask.causal,
        scale=1 / math.sqrt(q.shape[-1]), implementation=implementation)
    if impl == "cudnn":
        try:
            return call("cudnn")
        except (NotImplementedError, ValueError, RuntimeError):
            pass
    return call("xla")


def attend(q, k, v, mask: Mask, kv_layout: str = "BNSH", dropout_mask=None):
    """Attention with mask.impl: q [B, T, NH, HD] (roped, unscaled), k/v [B, KV, S, HD] ('BNSH') or [B, S, KV, HD]
    ('BSNH'), dropout_mask None or [B, KV, (NH/KV)*T, S] of 0 and 1/keep (grouped only) -> [B, T, NH, HD]."""
    if mask.impl == "grouped":
        return _grouped(q, k, v, mask, kv_layout, dropout_mask)
    if dropout_mask is not None:
        raise ValueError(f"attention dropout needs the grouped implementation, not {mask.impl!r}")
    return _fused(q, k, v, mask, kv_layout, mask.impl)
