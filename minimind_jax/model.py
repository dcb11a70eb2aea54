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

from minimind_jax import attention, dots, moe
from minimind_jax.attention import attention_bias, causal_attention, grouped_attention, query_blocks  # noqa: F401
from minimind_jax.config import MiniMindConfig
from minimind_jax.moe import block_experts, dense_experts  # noqa: F401
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
    """Keys and values of every position written so far, one pair per layer in `layout`: [B, KV, S, HD] ('BNSH',
    what the CPU's attention reads) or [B, S, KV, HD] ('BSNH', the fused accelerator kernels').

    `mask[b, s]` is 1 where slot s holds a real (not padding) token; `index` is the number of slots written,
    i.e. the absolute position of the next token. `empty` (static) marks a cache nothing was written to yet: its
    first forward (the prefill) attends causally among its own tokens, the cheaper causal path, instead of to all
    S slots, the empty ones masked.
    """
    k: tuple[jax.Array, ...]             # L x [B, KV, S, HD] | [B, S, KV, HD]
    v: tuple[jax.Array, ...]
    mask: jax.Array                      # int32 [B, S]
    index: jax.Array                     # int32 scalar
    layout: str = struct.field(pytree_node=False, default="BNSH")
    empty: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def create(cls, cfg: MiniMindConfig, batch: int, length: int, dtype=F32, layout: str | None = None) -> "KVCache":
        """Empty cache; layout None: the one this backend's attention reads (attention.choose)."""
        layout = layout or attention.cache_layout(attention.choose(dtype, cfg.head_dim))
        KV, HD = cfg.num_key_value_heads, cfg.head_dim
        shape = (batch, KV, length, HD) if layout == "BNSH" else (batch, length, KV, HD)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
        return cls(k=zeros, v=zeros, mask=jnp.zeros((batch, length), jnp.int32), index=jnp.zeros((), jnp.int32),
                   layout=layout, empty=True)

    @property
    def length(self) -> int:
        return self.mask.shape[1]


# ---- building blocks ---------------------------------------------------------------------------------------------

def matmul(x, kernel, policy: Policy):
    """x @ kernel over x's last axis: [..., K] x [K, N] -> [..., N] in the compute dtype.

    Flattened to one 2-D dot (3-D dot_general is slow on XLA:CPU) that accumulates in float32, which is also
    what makes bf16 take the fast path on this CPU; its backward keeps bf16 operands too (dots.dot).
    """
    cd = policy.compute_dtype
    y = dots.dot(x.reshape(-1, x.shape[-1]).astype(cd), kernel.astype(cd), cd)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def matmul_parts(x, parts, policy: Policy):
    """x @ W with W given as row blocks of W^T (see decode_layout): one independent dot per block.

    A skinny product ([a few rows, K] x [K, N], i.e. decoding) is bound by reading W, and XLA:CPU runs one dot
    on one core; independent dots over separate blocks run on all of them (~2x on 2 cores).
    """
    cd = policy.compute_dtype
    x2 = x.reshape(-1, x.shape[-1]).astype(cd)
    y = jnp.concatenate([dots.dot_t(x2, p.astype(cd), cd) for p in parts], axis=-1)
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
    """cos, sin [T, head_dim] = [cos(t*f), cos(t*f)] (halves repeated: rotate-half layout), float32.

    positions: a NumPy array when they are known while tracing (a forward without a cache, or a prefill), whose
    tables are then constants; traced positions (decoding) compute them in the step. Left to fusion, XLA:CPU
    would recompute cos and sin for every element of every [B, T, heads, HD] product that reads them, in each
    layer and its backward.
    """
    inv_freq, attention_factor = rope_frequencies(cfg)
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]      # [T, HD/2] float32, either library
    if isinstance(positions, np.ndarray):                                    # correctly rounded to float32
        cos, sin = (jnp.asarray(f(angles.astype(np.float64)).astype(np.float32)) for f in (np.cos, np.sin))
    else:
        cos, sin = jnp.cos(angles), jnp.sin(angles)
    return tuple(jnp.concatenate([t, t], axis=-1) * attention_factor for t in (cos, sin))   # [T, HD]


def apply_rope(x, cos, sin):
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] over the two halves of head_dim."""
    x1, x2 = jnp.split(x, 2, axis=-1)                                        # [B, T, N, HD/2] each
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]                  # [1, T, 1, HD]
    return (x.astype(F32) * cos + rotated.astype(F32) * sin).astype(x.dtype)


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


class Attention(nn.Module):
    cfg: MiniMindConfig
    policy: Policy

    @nn.compact
    def __call__(self, x, cos, sin, mask: attention.Mask, seed, site: int, cache_kv=None, index=None,
                 kv_layout: str = "BNSH"):
        """x [B, T, H] -> ([B, T, H], (k, v) the layer's updated cache or None). Dropout sites: site, site + 1."""
        cfg, policy = self.cfg, self.policy
        B, T, _ = x.shape
        NH, KV, HD = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = Linear(NH * HD, policy, name="q_proj")(x).reshape(B, T, NH, HD)
        k = Linear(KV * HD, policy, name="k_proj")(x).reshape(B, T, KV, HD)
        v = Linear(KV * HD, policy, name="v_proj")(x).reshape(B, T, KV, HD)
        if cfg.qk_norm:                                                      # one weight [HD] shared by all heads
            q, k = rms_norm(cfg, policy, "q_norm")(q), rms_norm(cfg, policy, "k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)              # [B, T, heads, HD]
        if cache_kv is not None:                                             # write at `index`
            cache_kv = tuple(write_cache(c, new, index, kv_layout) for c, new in zip(cache_kv, (k, v)))
        if cache_kv is None or mask.causal:                                  # keys: the T new positions
            kv_layout = "BSNH"
        else:                                                                # keys: all S slots
            k, v = cache_kv
        probs_dropout = None
        if mask.impl == "grouped":                                           # only it draws attention dropout
            probs_dropout = dropout_scale(seed, site, (B, KV, NH // KV * T, k.shape[1 if kv_layout == "BSNH" else 2]),
                                          cfg.dropout)
        out = attention.attend(q, k, v, mask, kv_layout, probs_dropout).reshape(B, T, NH * HD)
        out = Linear(cfg.hidden_size, policy, name="o_proj")(out)
        return dropout(out, cfg.dropout, seed, site + 1), cache_kv


def write_cache(cache, new, index, layout: str):
    """new [B, T, KV, HD] written into cache slots index..index+T-1 (cache in `layout`)."""
    if layout == "BNSH":
        return lax.dynamic_update_slice(cache, new.transpose(0, 2, 1, 3).astype(cache.dtype), (0, 0, index, 0))
    return lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0, index, 0, 0))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Also the shared experts of an MoE layer, concatenated along the width."""
    cfg: MiniMindConfig
    policy: Policy
    intermediate_size: int

    @nn.compact
    def __call__(self, x, seed=None, site: int = 0):
        gate = Linear(self.intermediate_size, self.policy, name="gate_proj")(x)
        up = Linear(self.intermediate_size, self.policy, name="up_proj")(x)
        # In float32 and rounded to the compute dtype after silu and after the product, as autocast does: XLA:CPU's
        # own bf16 elementwise ops are ~2.5x slower than the same float32 ops with one rounding each.
        act = jax.nn.silu(gate.astype(F32)).astype(gate.dtype)
        hidden = (act.astype(F32) * up.astype(F32)).astype(gate.dtype)
        out = Linear(self.cfg.hidden_size, self.policy, name="down_proj")(hidden)
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


class Experts(nn.Module):
    """E SwiGLU experts as stacked arrays [E, ...] (no Python loop over experts), dispatched by minimind_jax.moe:
    dense for a few tokens, token slabs on CPU, grouped matmuls on accelerators.

    With a capacity factor (cfg.moe_capacity_factor, when the config has one) pairs past their expert's slab are
    dropped, and the dropped fraction is sown as 'moe_dropped_frac'."""
    cfg: MiniMindConfig
    policy: Policy

    @nn.compact
    def __call__(self, x, topk_weight, topk_idx):               # x [N, H], topk_* [N, k] -> [N, H]
        E, H, I = self.cfg.n_routed_experts, self.cfg.hidden_size, self.cfg.moe_intermediate_size
        w_gate = Kernel((E, H, I), self.policy, name="gate_proj")()
        w_up = Kernel((E, H, I), self.policy, name="up_proj")()
        w_down = Kernel((E, I, H), self.policy, name="down_proj")()
        capacity_factor = getattr(self.cfg, "moe_capacity_factor", None)
        out, dropped = moe.routed_experts(x.astype(self.policy.compute_dtype), w_gate, w_up, w_down, topk_weight,
                                          topk_idx, capacity_factor)
        if capacity_factor:
            self.sow("intermediates", "moe_dropped_frac", dropped)
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
        logits = dots.dot(x2.astype(policy.compute_dtype), router)          # [N, E], route in f32
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
    def __call__(self, x, cos, sin, mask, train: bool, seed=None, cache_kv=None, index=None, kv_layout="BNSH"):
        cfg, policy = self.cfg, self.policy
        site = 1 + 4 * self.layer                                            # site 0 is the embedding
        h, cache_kv = Attention(cfg, policy, name="self_attn")(rms_norm(cfg, policy, "input_layernorm")(x), cos, sin,
                                                               mask, seed, site, cache_kv, index, kv_layout)
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
        seed = dropout_seed(self.make_rng("dropout")) if train and self.cfg.dropout > 0 else None
        impl = attention.choose(self.policy.compute_dtype, self.cfg.head_dim, dropout=seed is not None)
        if cache is not None:
            new_mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
            key_mask = lax.dynamic_update_slice(cache.mask, new_mask, (0, offset))
        if cache is None or cache.empty:                                     # keys: the T positions themselves
            mask = attention.make_mask(impl, positions, attention_mask, T, cached=False)
        else:                                                                # keys: the cache's S slots
            mask = attention.make_mask(impl, positions, key_mask, cache.length, cached=True)
        # an empty cache has index 0 (nothing written): its positions are known while tracing too
        cos, sin = rope_tables(np.arange(T) if cache is None or cache.empty else positions, self.cfg)

        # The residual stream stays in the parameters' dtype (float32) whatever the compute dtype, as under
        # autocast: each block's output is added to it at full precision; the norms and matmuls cast for themselves.
        x = jnp.take(self.embed_tokens, input_ids, axis=0)                   # [B, T, H]
        x = dropout(x, self.cfg.dropout, seed, 0)
        aux = jnp.zeros((), F32)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, layer_aux, kv = layer(x, cos, sin, mask, train, seed, kv, offset,
                                     "BNSH" if cache is None else cache.layout)
            aux = aux + layer_aux
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        if cache is not None:
            cache = cache.replace(k=tuple(new_k), v=tuple(new_v), mask=key_mask, index=cache.index + T, empty=False)
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
        logits = dots.dot_t(h2, self.embed_tokens.astype(cd), self.policy.output_dtype)   # [N, V], no transposed copy
        return logits.reshape(*hidden.shape[:-1], self.cfg.vocab_size)


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
                 return_hidden: bool = False, logits_last: int = 0) -> CausalLMOutput:
        """input_ids int [B, T]; attention_mask [B, T] (1 keep, 0 pad) or None; with `cache`, the T tokens are
        written at positions cache.index.. and attend to every real slot before them.

        `train=True` enables dropout (rngs={'dropout': key} when cfg.dropout > 0) and the MoE aux loss.
        `logits_last=n` projects only the last n positions (logits [B, n, V]; 0: all): a prefill needs one and a
        completion's log-probs its own; at a 6,400-token vocabulary the projection is most of a small model's
        forward, and XLA does not drop the positions a slice of the logits discards.
        """
        backbone = MiniMindModel(self.cfg, self.policy, name="model")
        hidden, aux, cache = backbone(input_ids, attention_mask, train, cache)
        logits = backbone.lm_head(hidden[:, -logits_last:] if logits_last else hidden)
        return CausalLMOutput(logits=logits, aux_loss=aux,
                              hidden_states=hidden if return_hidden else None, cache=cache)
