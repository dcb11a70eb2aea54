"""MiniMind, the reference's LLaMA-style decoder, in Flax Linen, both generations.

    x = dropout(embed(ids))
    per layer:  h = x + attn(rmsnorm(x));  x = h + ffn(rmsnorm(h))       (pre-norm)
    logits = rmsnorm(x) @ embed^T                                       (tied lm_head)

Attention is GQA with rotate-half RoPE (optionally YaRN-scaled); the FFN is SwiGLU or a routed MoE whose experts
are stacked arrays. Every matmul flattens its operand to 2-D and accumulates in float32.

Generation 3 (minimind-3, Qwen3's architecture) is the same network with: an RMSNorm over head_dim on q and k
before RoPE (QK-norm), the norm weight multiplied in float32, head_dim free of hidden/heads, no FFN dropout, and an
MoE without shared experts whose top-1 weight is renormalised (to exactly 1) and whose aux loss counts picks per
token. The config's fields select each of these.

Positions are absolute indices into the (left-padded) input: a full forward over a generated sequence reproduces
the logits seen while decoding it token by token with the KV cache.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct, traverse_util
from jax import lax

from minimind_jax.config import MiniMindConfig
from minimind_jax.precision import POLICIES, Policy

F32 = jnp.float32
init_normal = nn.initializers.normal(0.02)


@struct.dataclass
class CausalLMOutput:
    logits: jax.Array                    # [B, T, V] output dtype (float32)
    aux_loss: jax.Array                  # scalar float32: MoE load balance, 0 unless train and use_moe
    hidden_states: jax.Array | None = None   # [B, T, H] final-normed, when return_hidden
    cache: "KVCache | None" = None           # the updated cache, when one was passed


@struct.dataclass
class KVCache:
    """Keys and values of every position written so far, one [B, KV, S, HD] pair per layer.

    `mask[b, s]` is 1 where slot s holds a real (not padding) token; `index` is the number of slots written,
    i.e. the absolute position of the next token.
    """
    k: tuple[jax.Array, ...]             # L x [B, KV, S, HD]
    v: tuple[jax.Array, ...]             # L x [B, KV, S, HD]
    mask: jax.Array                      # int32 [B, S]
    index: jax.Array                     # int32 scalar

    @classmethod
    def create(cls, cfg: MiniMindConfig, batch: int, length: int, dtype=F32) -> "KVCache":
        shape = (batch, cfg.num_key_value_heads, length, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
        return cls(k=zeros, v=zeros, mask=jnp.zeros((batch, length), jnp.int32), index=jnp.zeros((), jnp.int32))

    @property
    def length(self) -> int:
        return self.mask.shape[1]


# ---- building blocks ---------------------------------------------------------------------------------------------

def matmul(x, kernel, policy: Policy):
    """x @ kernel over x's last axis: [..., K] x [K, N] -> [..., N] in the compute dtype.

    Flattened to one 2-D dot (3-D dot_general is slow on XLA:CPU) that accumulates in float32, which is also
    what makes bf16 take the fast path on this CPU.
    """
    cd = policy.compute_dtype
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(cd), kernel.astype(cd), preferred_element_type=F32)
    return y.astype(cd).reshape(*x.shape[:-1], kernel.shape[-1])


def matmul_parts(x, parts, policy: Policy):
    """x @ W with W given as row blocks of W^T (see decode_layout): one independent dot per block.

    A skinny product ([a few rows, K] x [K, N], i.e. decoding) is bound by reading W, and XLA:CPU runs one dot
    on one core; independent dots over separate blocks run on all of them (~2x on 2 cores).
    """
    cd = policy.compute_dtype
    x2 = x.reshape(-1, x.shape[-1]).astype(cd)
    y = jnp.concatenate([lax.dot_general(x2, p.astype(cd), (((1,), (1,)), ((), ())), preferred_element_type=F32)
                         for p in parts], axis=-1).astype(cd)
    return y.reshape(*x.shape[:-1], y.shape[-1])


class Linear(nn.Module):
    """Bias-free projection; `kernel` is [in, out] (torch stores the transpose)."""
    features: int
    policy: Policy

    @nn.compact
    def __call__(self, x):                                       # [..., in] -> [..., features]
        kernel = self.param("kernel", init_normal, (x.shape[-1], self.features), self.policy.param_dtype)
        if self.has_variable("decode", "kernel_parts"):         # the decoding layout, when given
            return matmul_parts(x, self.get_variable("decode", "kernel_parts"), self.policy)
        return matmul(x, kernel, self.policy)


class Kernel(nn.Module):
    """Owns a bare kernel (a router [in, out], or stacked experts [E, in, out]); calling it returns it in the
    compute dtype."""
    shape: tuple[int, ...]
    policy: Policy

    @nn.compact
    def __call__(self):
        return self.param("kernel", init_normal, self.shape, self.policy.param_dtype).astype(self.policy.compute_dtype)


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps) over the last axis, normalised in float32. Generation 2 casts back to x's
    dtype before the weight multiply, generation 3 after it (`weight_fp32`); the same in float32."""
    eps: float
    policy: Policy
    weight_fp32: bool = False

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.policy.param_dtype)
        x32 = x.astype(F32)
        normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.weight_fp32:
            return (weight.astype(F32) * normed).astype(x.dtype)
        return weight.astype(x.dtype) * normed.astype(x.dtype)


def rms_norm(cfg: MiniMindConfig, policy: Policy, name: str | None = None) -> RMSNorm:
    return RMSNorm(cfg.rms_norm_eps, policy, cfg.norm_weight_fp32, name=name)


def rope_frequencies(cfg: MiniMindConfig) -> tuple[np.ndarray, float]:
    """inv_freq[i] = theta^(-2i/head_dim), [head_dim/2], and the attention factor (YaRN).

    YaRN (inference_rope_scaling) slows the low-frequency dimensions by `factor` with a linear ramp between the
    dimensions that turn `beta_fast` and `beta_slow` times over the original 2048 positions.
    """
    d, theta = cfg.head_dim, cfg.rope_theta
    # float32 like the reference (torch): a float32 exponent, the power correctly rounded to float32 (NumPy's own
    # float32 power is a few ulp off, i.e. ~5e-5 in cos at position 32767), then a float32 reciprocal.
    exponent = np.arange(0, d, 2, dtype=np.float32)[: d // 2] / np.float32(d)
    inv_freq = np.float32(1.0) / (theta ** exponent.astype(np.float64)).astype(np.float32)
    attention_factor = 1.0
    if cfg.inference_rope_scaling:
        orig_max, factor, beta_fast, beta_slow, attention_factor = 2048, 16.0, 32.0, 1.0, 1.0
        if cfg.max_position_embeddings / orig_max > 1.0:
            inv_dim = lambda b: d * math.log(orig_max / (b * 2 * math.pi)) / (2 * math.log(theta))
            low = max(math.floor(inv_dim(beta_fast)), 0)
            high = min(math.ceil(inv_dim(beta_slow)), d // 2 - 1)
            ramp = np.clip((np.arange(d // 2, dtype=np.float32) - low) / max(high - low, 0.001), 0, 1)
            inv_freq = inv_freq * (1 - ramp + ramp / factor)
    return inv_freq.astype(np.float32), attention_factor


def rope_tables(positions, cfg: MiniMindConfig):
    """cos, sin [T, head_dim] = [cos(t*f), cos(t*f)] (halves repeated: rotate-half layout), float32."""
    inv_freq, attention_factor = rope_frequencies(cfg)
    angles = positions.astype(F32)[:, None] * inv_freq[None, :]             # [T, HD/2]
    angles = jnp.concatenate([angles, angles], axis=-1)                      # [T, HD]
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def apply_rope(x, cos, sin):
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] over the two halves of head_dim."""
    x1, x2 = jnp.split(x, 2, axis=-1)                                        # [B, T, N, HD/2] each
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]                  # [1, T, 1, HD]
    return (x.astype(F32) * cos + rotated.astype(F32) * sin).astype(x.dtype)


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


def dropout_seed(rng) -> jax.Array:
    """uint32[4] seed for every dropout mask of one forward pass, from the 'dropout' rng."""
    return jnp.concatenate([jnp.ravel(jax.random.key_data(rng))[:2].astype(jnp.uint32), jnp.zeros(2, jnp.uint32)])


def dropout_scale(seed, site: int, shape, rate: float):
    """float32 mask of 0 and 1/(1-rate) for dropout site `site`; None when seed is None (not training).

    Drawn with XLA's RngBitGenerator from (seed, site) rather than a threefry hash per call site: the unrolled
    hashes made a train step with dropout compile ~10x slower on CPU.
    """
    if seed is None or rate == 0.0:
        return None
    bits = lax.rng_bit_generator(seed.at[2].set(site), shape, dtype=jnp.uint32)[1]
    return jnp.where(bits >= jnp.uint32(rate * 2**32), 1.0 / (1.0 - rate), 0.0).astype(F32)


def dropout(x, rate: float, seed, site: int):
    """Inverted dropout (identity when seed is None)."""
    scale = dropout_scale(seed, site, x.shape, rate)
    return x if scale is None else (x * scale).astype(x.dtype)


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
    d_v = jnp.einsum("bkqs,bkqd->bksd", kept.astype(cd), d_out, preferred_element_type=F32).astype(v.dtype)
    d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out, v, preferred_element_type=F32)         # [B, KV, R*T, S]
    if dropout_mask is not None:
        d_probs = d_probs * dropout_mask
    row = jnp.sum(d_out.astype(F32) * out.astype(F32), axis=-1, keepdims=True)            # [B, KV, R*T, 1]
    d_scores = (probs * (d_probs - row)).astype(cd)
    d_q = jnp.einsum("bkqs,bksd->bkqd", d_scores, k, preferred_element_type=F32).astype(q.dtype)
    d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, q, preferred_element_type=F32).astype(k.dtype)
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


class Attention(nn.Module):
    cfg: MiniMindConfig
    policy: Policy

    @nn.compact
    def __call__(self, x, cos, sin, bias, seed, site: int, cache_kv=None, index=None):
        """x [B, T, H] -> ([B, T, H], (k, v) the layer's updated cache or None). Dropout sites: site, site + 1."""
        cfg, policy = self.cfg, self.policy
        B, T, _ = x.shape
        NH, KV, HD = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = Linear(NH * HD, policy, name="q_proj")(x).reshape(B, T, NH, HD)
        k = Linear(KV * HD, policy, name="k_proj")(x).reshape(B, T, KV, HD)
        v = Linear(KV * HD, policy, name="v_proj")(x).reshape(B, T, KV, HD)
        if cfg.qk_norm:                                                      # one weight [HD] shared by all heads
            q, k = rms_norm(cfg, policy, "q_norm")(q), rms_norm(cfg, policy, "k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))               # [B, heads, T, HD]
        if cache_kv is not None:                                             # write at `index`, attend to all S slots
            k_cache, v_cache = cache_kv
            k = lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0))
            v = lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
            cache_kv = (k, v)
        q = q.reshape(B, KV, (NH // KV) * T, HD) * (1 / math.sqrt(HD))      # the heads that share a kv head
        probs_dropout = dropout_scale(seed, site, q.shape[:3] + (k.shape[2],), cfg.dropout)
        if cache_kv is None:                                                 # causal self-attention over T
            out = causal_attention(q, k, v, bias, probs_dropout, query_blocks(T))
        else:
            out = grouped_attention(q, k, v, bias, probs_dropout)            # [B, KV, R*T, HD]
        out = out.reshape(B, NH, T, HD).transpose(0, 2, 1, 3).reshape(B, T, NH * HD)
        out = Linear(cfg.hidden_size, policy, name="o_proj")(out)
        return dropout(out, cfg.dropout, seed, site + 1), cache_kv


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Also the shared experts of an MoE layer, concatenated along the width."""
    cfg: MiniMindConfig
    policy: Policy
    intermediate_size: int

    @nn.compact
    def __call__(self, x, seed=None, site: int = 0):
        gate = Linear(self.intermediate_size, self.policy, name="gate_proj")(x)
        up = Linear(self.intermediate_size, self.policy, name="up_proj")(x)
        out = Linear(self.cfg.hidden_size, self.policy, name="down_proj")(nn.silu(gate) * up)
        return dropout(out, self.cfg.dropout, seed, site)


def load_balance_loss(scores, topk_idx, cfg: MiniMindConfig, batch: int):
    """The reference's auxiliary loss for one layer; scores [N, E] float32, topk_idx [N, k].

    seq_aux:       alpha * mean_b sum_e ce[b, e] * mean_t scores[b, t, e],  ce = slot count / (T * k / E)
    generation 2:  alpha * sum_e P_e * f_e,  P = mean scores, f = E * fraction of all (token, slot) choosing e
    generation 3:  E * alpha * sum_e P_e * f_e,  f = picks of e per token (sums to k): k times generation 2's
    Padding tokens count, as in the reference.
    """
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    chosen = jax.nn.one_hot(topk_idx, E, dtype=F32)                          # [N, k, E]
    if cfg.seq_aux:
        T = scores.shape[0] // batch
        ce = chosen.reshape(batch, T * k, E).sum(axis=1) / (T * k / E)        # [B, E]
        return jnp.mean(jnp.sum(ce * scores.reshape(batch, T, E).mean(axis=1), axis=1)) * cfg.aux_loss_alpha
    f = chosen.reshape(-1, E).mean(axis=0) * E                               # [E]
    if cfg.generation == 3:
        f = f * k
    return jnp.sum(scores.mean(axis=0) * f) * cfg.aux_loss_alpha


def expert_block(tokens: int, cfg: MiniMindConfig) -> int | None:
    """Rows per block of the block-sparse expert dispatch, or None for the dense one: blocks pay when the padding
    they add (up to a block per expert) is small against the E - k experts a token skips (training, prefill);
    a few decoding tokens are cheaper dense."""
    E, k, block = cfg.n_routed_experts, cfg.num_experts_per_tok, 256
    return block if tokens * (E - k) > 2 * E * block else None


def dense_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx):
    """Every expert on every token, unchosen ones weighted 0: sum_e w_e down_e(a_e) = [down_1..down_E] @ [w_e a_e].

    x [N, H], w_gate/w_up [E, H, I], w_down [E, I, H], topk_* [N, k] -> [N, H] f32. E/k times the routed FLOPs.
    """
    N, E, I = x.shape[0], w_gate.shape[0], w_gate.shape[2]
    combine = jnp.einsum("nk,nke->ne", topk_weight, jax.nn.one_hot(topk_idx, E, dtype=F32))             # [N, E]
    gate = jnp.einsum("nh,ehi->nei", x, w_gate, preferred_element_type=F32)                              # [N, E, I]
    up = jnp.einsum("nh,ehi->nei", x, w_up, preferred_element_type=F32)
    act = (nn.silu(gate) * up * combine[:, :, None]).astype(x.dtype)
    return jnp.dot(act.reshape(N, E * I), w_down.reshape(E * I, -1), preferred_element_type=F32)


def block_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx, block: int):
    """The same sum over only the chosen (token, expert) pairs, with static shapes: the N*k pairs sorted by expert,
    each expert's run padded to whole blocks of `block` rows, one batched matmul over the blocks with each block's
    expert's weights, and the rows added back to their tokens. Padding rows have weight 0.

    Slots M = N*k + E*(block-1) rounded up to blocks (~1.8x faster than dense fwd+bwd for 4 experts, top-2, at the
    moe preset's 2720 tokens on CPU; jax.lax.ragged_dot measured slower than dense there).
    """
    N, H = x.shape
    E, k = w_gate.shape[0], topk_idx.shape[1]
    A = N * k
    M = -(-(A + E * (block - 1)) // block) * block
    expert = topk_idx.reshape(-1)                                            # [A] expert of each pair
    order = jnp.argsort(expert, stable=True)
    sizes = jnp.bincount(expert, length=E)                                   # [E] pairs per expert
    padded = (sizes + block - 1) // block * block                            # [E] its run, whole blocks
    padded_end = jnp.cumsum(padded)
    sorted_start = jnp.cumsum(sizes) - sizes                                 # [E] its first pair in sorted order
    sorted_expert = expert[order]
    slot = (padded_end - padded)[sorted_expert] + jnp.arange(A) - sorted_start[sorted_expert]   # [A]
    token = jnp.zeros((M,), jnp.int32).at[slot].set(order // k)              # [M] padding rows read token 0 ...
    weight = jnp.zeros((M,), F32).at[slot].set(topk_weight.reshape(-1)[order])   # ... with weight 0
    block_expert = jnp.minimum(jnp.searchsorted(padded_end, jnp.arange(M // block) * block, side="right"),
                               E - 1)                                        # [M / block]
    xb = x[token].reshape(M // block, block, H)
    gate = jnp.einsum("bch,bhi->bci", xb, w_gate[block_expert], preferred_element_type=F32)
    up = jnp.einsum("bch,bhi->bci", xb, w_up[block_expert], preferred_element_type=F32)
    act = (nn.silu(gate) * up * weight.reshape(M // block, block, 1)).astype(x.dtype)
    rows = jnp.einsum("bci,bih->bch", act, w_down[block_expert], preferred_element_type=F32).reshape(M, H)
    return jnp.zeros((N, H), F32).at[token].add(rows)


class Experts(nn.Module):
    """E SwiGLU experts as stacked arrays [E, ...] (no Python loop over experts), run densely for a few tokens and
    block-sparse for many (expert_block)."""
    cfg: MiniMindConfig
    policy: Policy

    @nn.compact
    def __call__(self, x, topk_weight, topk_idx):               # x [N, H], topk_* [N, k] -> [N, H]
        E, H, I = self.cfg.n_routed_experts, self.cfg.hidden_size, self.cfg.moe_intermediate_size
        w_gate = Kernel((E, H, I), self.policy, name="gate_proj")()
        w_up = Kernel((E, H, I), self.policy, name="up_proj")()
        w_down = Kernel((E, I, H), self.policy, name="down_proj")()
        x = x.astype(self.policy.compute_dtype)
        block = expert_block(x.shape[0], self.cfg)
        if block is None:
            out = dense_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx)
        else:
            out = block_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx, block)
        return out.astype(self.policy.compute_dtype)


class MoEFeedForward(nn.Module):
    """Routed SwiGLU experts (top-k of a softmax router, weights renormalised) plus shared experts on every token.

    The S shared experts are unweighted, so their sum is one SwiGLU of width S * I (kernels concatenated).
    The router logits [N, E] and this layer's aux loss are sown into 'intermediates' (free unless it is mutable).
    """
    cfg: MiniMindConfig
    policy: Policy

    @nn.compact
    def __call__(self, x, train: bool, seed=None, site: int = 0):
        """-> (out [B, T, H], aux loss). Dropout sites: site (routed), site + 1 (shared)."""
        cfg, policy = self.cfg, self.policy
        B, T, H = x.shape
        E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
        x2 = x.reshape(B * T, H)                                             # [N, H]

        router = Kernel((H, E), policy, name="gate")()                      # the reference's mlp.gate
        logits = jnp.dot(x2.astype(policy.compute_dtype), router, preferred_element_type=F32)   # [N, E], route in f32
        scores = jax.nn.softmax(logits, axis=-1)
        topk_weight, topk_idx = lax.top_k(scores, k)                         # [N, k]
        # Generation 3 renormalises a single pick too: its weight is then exactly 1, so the router learns from
        # the aux loss alone.
        if cfg.norm_topk_prob and (k > 1 or cfg.generation == 3):
            topk_weight = topk_weight / (jnp.sum(topk_weight, axis=-1, keepdims=True) + 1e-20)
        out = Experts(cfg, policy, name="experts")(x2, topk_weight, topk_idx).reshape(B, T, H)
        out = dropout(out, cfg.dropout, seed, site)
        if cfg.n_shared_experts > 0:
            out = out + FeedForward(cfg, policy, cfg.n_shared_experts * cfg.intermediate_size,
                                    name="shared_experts")(x, seed, site + 1)
        aux = load_balance_loss(scores, topk_idx, cfg, B) if train and cfg.aux_loss_alpha > 0 else jnp.zeros((), F32)
        self.sow("intermediates", "router_logits", logits)
        self.sow("intermediates", "aux_loss", aux)
        return out, aux


class DecoderLayer(nn.Module):
    cfg: MiniMindConfig
    policy: Policy
    layer: int = 0                     # numbers this layer's dropout sites

    @nn.compact
    def __call__(self, x, cos, sin, bias, train: bool, seed=None, cache_kv=None, index=None):
        cfg, policy = self.cfg, self.policy
        site = 1 + 4 * self.layer                                            # site 0 is the embedding
        h, cache_kv = Attention(cfg, policy, name="self_attn")(rms_norm(cfg, policy, "input_layernorm")(x), cos, sin,
                                                               bias, seed, site, cache_kv, index)
        x = x + h
        h = rms_norm(cfg, policy, "post_attention_layernorm")(x)
        ffn_seed = seed if cfg.generation == 2 else None                     # generation 3 has no FFN dropout
        if cfg.use_moe:
            h, aux = MoEFeedForward(cfg, policy, name="mlp")(h, train, ffn_seed, site + 2)
        else:
            h = FeedForward(cfg, policy, cfg.intermediate_size, name="mlp")(h, ffn_seed, site + 2)
            aux = jnp.zeros((), F32)
        return x + h, aux, cache_kv


# ---- the backbone and the language model -------------------------------------------------------------------------

class MiniMindModel(nn.Module):
    """Embedding, decoder layers, final norm: ids [B, T] -> final-normed hidden states [B, T, H].

    Shared by the LM, the critic and the reward model (always under the name 'model').
    """
    cfg: MiniMindConfig
    policy: Policy = POLICIES["fp32"]

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = self.param("embed_tokens", init_normal, (cfg.vocab_size, cfg.hidden_size),
                                       self.policy.param_dtype)
        self.layers = [DecoderLayer(cfg, self.policy, i) for i in range(cfg.num_hidden_layers)]
        self.norm = rms_norm(cfg, self.policy)

    def __call__(self, input_ids, attention_mask=None, train: bool = False, cache: KVCache | None = None):
        """-> (hidden [B, T, H], aux_loss scalar f32, updated cache or None)."""
        B, T = input_ids.shape
        offset = 0 if cache is None else cache.index
        positions = offset + lax.iota(jnp.int32, T)                          # [T] absolute positions
        if cache is not None:                                                # keys are the cache's S slots
            new_mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
            key_mask = lax.dynamic_update_slice(cache.mask, new_mask, (0, offset))
            bias = attention_bias(positions, key_mask, cache.length)
        else:
            bias = attention_bias(positions, attention_mask, T)
        cos, sin = rope_tables(positions, self.cfg)

        seed = dropout_seed(self.make_rng("dropout")) if train and self.cfg.dropout > 0 else None
        x = jnp.take(self.embed_tokens, input_ids, axis=0).astype(self.policy.compute_dtype)   # [B, T, H]
        x = dropout(x, self.cfg.dropout, seed, 0)
        aux = jnp.zeros((), F32)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, layer_aux, kv = layer(x, cos, sin, bias, train, seed, kv, offset)
            aux = aux + layer_aux
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        if cache is not None:
            cache = KVCache(k=tuple(new_k), v=tuple(new_v), mask=key_mask, index=cache.index + T)
        return self.norm(x), aux, cache

    def final_norm(self, hidden):
        """The final RMSNorm again (the reference critic of generation 3 applies it twice)."""
        return self.norm(hidden)

    def lm_head(self, hidden):
        """Tied output projection: hidden [..., H] @ embed_tokens^T -> logits [..., V] in the output dtype."""
        if self.has_variable("decode", "embed_parts"):          # row blocks of the embedding (decode_layout)
            logits = matmul_parts(hidden, self.get_variable("decode", "embed_parts"), self.policy)
            return logits.astype(self.policy.output_dtype)
        cd = self.policy.compute_dtype
        h2 = hidden.reshape(-1, hidden.shape[-1]).astype(cd)
        logits = lax.dot_general(h2, self.embed_tokens.astype(cd), (((1,), (1,)), ((), ())),
                                 preferred_element_type=F32)                 # [N, V], no transposed copy
        return logits.astype(self.policy.output_dtype).reshape(*hidden.shape[:-1], self.cfg.vocab_size)


def decode_layout(params, parts: int, dtype=None) -> dict:
    """The optional 'decode' variables for one-token steps: every 2-D projection kernel [in, out] transposed and
    cut into `parts` row blocks [out/parts, in], and the embedding cut into row blocks [V/parts, H].

        model.apply({'params': params, 'decode': decode_layout(params, 2)}, token, cache=cache)

    Same function, but each skinny matmul becomes `parts` independent dots (see matmul_parts). Built once per
    generate() call, outside the decoding loop.
    """
    out = {}
    for path, w in traverse_util.flatten_dict(params).items():
        w = w if dtype is None else w.astype(dtype)
        if path[-1] == "kernel" and w.ndim == 2 and path[-2] != "gate":
            out[path[:-1] + ("kernel_parts",)] = tuple(jnp.array_split(w.T, parts, axis=0))
        elif path[-1] == "embed_tokens":
            out[path[:-1] + ("embed_parts",)] = tuple(jnp.array_split(w, parts, axis=0))
    return traverse_util.unflatten_dict(out)


class MiniMindForCausalLM(nn.Module):
    cfg: MiniMindConfig
    policy: Policy = POLICIES["fp32"]

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, train: bool = False, *, cache: KVCache | None = None,
                 return_hidden: bool = False) -> CausalLMOutput:
        """input_ids int [B, T]; attention_mask [B, T] (1 keep, 0 pad) or None; with `cache`, the T tokens are
        written at positions cache.index.. and attend to every real slot before them.

        `train=True` enables dropout (rngs={'dropout': key} when cfg.dropout > 0) and the MoE aux loss.
        """
        backbone = MiniMindModel(self.cfg, self.policy, name="model")
        hidden, aux, cache = backbone(input_ids, attention_mask, train, cache)
        return CausalLMOutput(logits=backbone.lm_head(hidden), aux_loss=aux,
                              hidden_states=hidden if return_hidden else None, cache=cache)
