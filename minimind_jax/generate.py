"""Sampling with a KV cache, jitted end to end: one prefill over the (left-padded) prompts, then a `lax.while_loop`
of one-token steps that stops as soon as every row has produced eos.

    out = generate(model, params, prompt_ids, prompt_mask, rng=key, max_new_tokens=128, temperature=0.8)
    out.sequences        # int32 [B, P + max_new_tokens]: prompt, then completion (pad after a row's first eos)
    out.completion_mask  # int32 [B, max_new_tokens]: 1 up to and including the first eos (all 1 if none)

Token t of the completion sits at absolute position P + t, exactly where a full forward over `sequences` with
attention mask [prompt_mask, completion_mask] puts it, so that forward reproduces the sampling logits.
One compiled program per (batch, prompt length, max_new_tokens) and sampling settings; it also traces under an
outer `jax.jit`.
"""
import os
from functools import partial

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

import losses
from minimind_jax.model import KVCache, MiniMindForCausalLM, decode_layout
from minimind_jax.precision import Policy


@struct.dataclass
class GenerateOutput:
    sequences: jax.Array          # int32 [B, P + N]
    completion_mask: jax.Array    # int32 [B, N]


def per_row(rng) -> bool:
    """Whether `rng` is one key per row ([B] typed keys or raw uint32 [B, 2]) rather than a single key."""
    return rng.ndim == (1 if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else 2)


# [B] keys, each folded with the same index: a row's key at one decoding step.
step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))


def sample_token(logits, rng, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """One token per row from logits [B, V] (float32): argmax when temperature is 0, else a draw from
    softmax(logits / temperature) restricted to the top_k largest (0: all) and then to the smallest set whose
    probability reaches top_p (1.0: all). `rng` is one key for the batch or one key per row."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0 or top_p < 1.0:
        # Candidates sorted by logit, descending: the top_k (a partial sort) or the whole vocabulary.
        ranked = lax.top_k(logits, top_k)[0] if top_k > 0 else -jnp.sort(-logits, axis=-1)     # [B, K]
        keep = jnp.ones_like(ranked, dtype=bool)
        if top_p < 1.0:
            probs = jax.nn.softmax(ranked, axis=-1)
            keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p          # mass before a token < top_p
        threshold = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)  # smallest kept logit
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    if per_row(rng):
        return jax.vmap(jax.random.categorical)(rng, logits).astype(jnp.int32)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def completion_mask(tokens, eos_token_id: int | None):
    """int32 [B, N]: 1 up to and including the first eos of each row, all 1 where there is none (or no eos id)."""
    if eos_token_id is None:
        return jnp.ones_like(tokens, dtype=jnp.int32)
    return losses.completion_mask(tokens, eos_token_id)


def decoding_model(model: MiniMindForCausalLM, params) -> MiniMindForCausalLM:
    """The model computing in the narrower of its policy's dtype and the weights' dtype: bf16 weights give a
    bf16 rollout (f32 accumulation, f32 logits) without an f32 copy of every weight at every step."""
    weight_dtype = jnp.dtype(params["model"]["embed_tokens"].dtype)
    compute = model.policy.compute_dtype
    if weight_dtype.itemsize < jnp.dtype(compute).itemsize:
        return model.clone(policy=Policy(weight_dtype, weight_dtype, model.policy.output_dtype))
    return model


def decode_parts() -> int:
    """How many blocks each decoding matmul is cut into: one per core on CPU (XLA:CPU runs a dot on one core),
    none on accelerators."""
    return min(os.cpu_count() or 1, 8) if jax.default_backend() == "cpu" else 1


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p", "eos_token_id",
                                   "pad_token_id", "parts", "prompt_groups"))
def _generate(model, params, input_ids, attention_mask, rng, *, max_new_tokens, temperature, top_k, top_p,
              eos_token_id, pad_token_id, parts=1, prompt_groups=1):
    B, P = input_ids.shape
    N = max_new_tokens
    variables = {"params": params}
    if parts > 1:                                    # one-token steps read the weights in per-core blocks
        variables["decode"] = decode_layout(params, parts, model.policy.compute_dtype)
    run = lambda ids, mask, cache: model.apply({"params": params}, ids, mask, cache=cache, logits_last=1)
    step_run = lambda ids, cache: model.apply(variables, ids, cache=cache)
    sample = lambda logits, key: sample_token(logits, key, temperature, top_k, top_p)
    finished = (lambda tok: tok == eos_token_id) if eos_token_id is not None else (lambda tok: jnp.zeros_like(tok, bool))

    # One key per row, folded with the step: a row's draws depend on its key alone, never on the rows it is
    # batched with, so a row samples the same completion on 1 device, on many, or split across processes.
    keys = rng if per_row(rng) else jax.random.split(rng, B)                  # [B]
    g = prompt_groups                    # rows come in runs of g identical prompts: each run is prefilled once
    cache = KVCache.create(model.cfg, B // g, P + N, model.policy.compute_dtype)
    out = run(input_ids[::g], attention_mask[::g], cache)                    # prefill: logits [B / g, 1, V]
    copies = lambda x: jnp.repeat(x, g, axis=0) if g > 1 and x.ndim else x   # ... and copied to its g rows
    out = out.replace(logits=copies(out.logits), cache=jax.tree.map(copies, out.cache))
    first = sample(out.logits[:, -1], step_keys(keys, 0))                    # [B]; prompts are left-padded
    tokens = jnp.full((B, N), pad_token_id, jnp.int32).at[:, 0].set(first)

    def cond(state):
        i, _, _, done, _ = state
        return (i < N) & ~jnp.all(done)

    def step(state):
        i, tokens, last, done, cache = state
        out = step_run(last[:, None], cache)                                 # one token at position P + i - 1
        tok = jnp.where(done, pad_token_id, sample(out.logits[:, -1], step_keys(keys, i)))  # [B]
        tokens = lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
        return i + 1, tokens, tok, done | finished(tok), out.cache

    state = (jnp.ones((), jnp.int32), tokens, first, finished(first), out.cache)
    _, tokens, _, _, _ = lax.while_loop(cond, step, state)
    sequences = jnp.concatenate([input_ids.astype(jnp.int32), tokens], axis=1)
    return GenerateOutput(sequences=sequences, completion_mask=completion_mask(tokens, eos_token_id))


def generate(model: MiniMindForCausalLM, params, input_ids, attention_mask=None, *, rng: jax.Array | None = None,
             max_new_tokens: int = 128, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_token_id: int | None = 2, pad_token_id: int = 0, prompt_groups: int = 1) -> GenerateOutput:
    """Sample `max_new_tokens` after left-padded prompts input_ids [B, P] (attention_mask 1 = real token).

    `rng` is one key (split into one per row) or one key per row ([B] typed or uint32 [B, 2]): a row's completion
    depends only on its prompt and its key. Greedy when temperature is 0 (then rng may be None).
    eos_token_id=None never stops early. Tokens after a row's first eos are pad_token_id. Compute follows the
    weights: pass bf16 params for a bf16 rollout. `prompt_groups=g` says the rows come in runs of g identical
    prompts (GRPO's g rollouts of each prompt): each run's prompt is prefilled once and its cache copied, the same
    completions for 1/g of the prefill.
    """
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 1:
        raise ValueError(f"generate: need temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 1; got "
                         f"{temperature}, {top_p}, {top_k}, {max_new_tokens}")
    if rng is None:
        if temperature > 0:
            raise ValueError("generate: sampling with temperature > 0 needs rng=jax.random.key(...)")
        rng = jax.random.key(0)
    if prompt_groups < 1 or len(input_ids) % prompt_groups:
        raise ValueError(f"generate: {len(input_ids)} rows are not runs of prompt_groups={prompt_groups}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = (jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32))
    return _generate(decoding_model(model, params), params, input_ids, attention_mask, rng,
                     max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                     top_p=float(top_p), eos_token_id=eos_token_id, pad_token_id=int(pad_token_id),
                     parts=decode_parts(), prompt_groups=int(prompt_groups))
