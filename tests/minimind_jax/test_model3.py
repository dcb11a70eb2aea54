"""minimind-3 (generation 3) in the one MiniMind model: against the upstream model's own outputs
(../shared/minimind3/golden/model_*.npz), the minimind-3 presets' parameter counts, and the generation-3 config."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import KVCache, MiniMindConfig, MiniMindForCausalLM
from minimind_jax.config import PRESETS3, count_active_params, count_params, detect_generation
from minimind_jax.generate import generate
from minimind_jax.model import rope_tables

ATOL = 1e-4          # fp32 logits and hidden states
AUX_ATOL = 1e-6


@partial(jax.jit, static_argnames=("model", "train", "return_hidden"))
def forward(model, params, ids, mask=None, train=False, return_hidden=False):
    return model.apply({"params": params}, ids, mask, train, return_hidden=return_hidden)


@partial(jax.jit, static_argnames=("model",))
def forward_sown(model, params, ids):
    """Train-mode forward with the 'intermediates' the MoE layers sow (router logits, per-layer aux)."""
    return model.apply({"params": params}, ids, train=True, mutable=["intermediates"])


@partial(jax.jit, static_argnames=("model",))
def cached_step(model, params, ids, mask, cache):
    return model.apply({"params": params}, ids, mask, cache=cache)


def decode(model, params, ids, mask, prefill: int):
    """Logits of positions prefill.. when the first `prefill` tokens fill the KV cache in one call and the rest
    follow one token per call: [B, T - prefill, V]."""
    B, T = ids.shape
    cache = KVCache.create(model.cfg, B, T)
    cache = cached_step(model, params, ids[:, :prefill], mask[:, :prefill], cache).cache
    steps = []
    for t in range(prefill, T):
        out = cached_step(model, params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
        steps.append(out.logits[:, 0])
        cache = out.cache
    return np.stack(steps, axis=1)


def masked_max_error(got, want, mask):
    return float(np.max(np.where(mask[..., None] == 1, np.abs(np.asarray(got) - want), 0)))


def shifted_cross_entropy(logits, labels):
    """Mean CE of logits[:, :-1] against labels[:, 1:], ignoring -100 (the upstream model's `labels=` loss)."""
    logits, labels = np.asarray(logits[:, :-1], np.float64), labels[:, 1:]
    keep = labels != -100
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return float(nll[keep].mean())


def test_dense_logits_and_loss(reference3):
    g, cfg, params = reference3("model_dense")
    assert cfg.generation == 3 and cfg.qk_norm and cfg.head_dim == 8
    out = forward(MiniMindForCausalLM(cfg), params, jnp.asarray(g["input_ids"]))
    assert out.logits.dtype == jnp.float32 and out.logits.shape == g["logits"].shape
    np.testing.assert_allclose(out.logits, g["logits"], atol=ATOL, rtol=0)
    assert float(out.aux_loss) == 0.0
    np.testing.assert_allclose(shifted_cross_entropy(out.logits, g["labels"]), float(g["loss"]), rtol=1e-5)


def test_padded_logits(reference3):
    """Left padding: real positions match; RoPE positions are absolute, not shifted by the pads."""
    g, cfg, params = reference3("model_dense")
    mask = g["padded_attention_mask"]
    out = forward(MiniMindForCausalLM(cfg), params, jnp.asarray(g["padded_input_ids"]), jnp.asarray(mask))
    assert masked_max_error(out.logits, g["padded_logits"], mask) < ATOL


@pytest.mark.parametrize("ids_key, mask_key, want_key", [("input_ids", None, "decode_logits"),
                                                         ("padded_input_ids", "padded_attention_mask",
                                                          "padded_decode_logits")])
def test_kv_cache_decode(reference3, ids_key, mask_key, want_key):
    """Prefill of 8 tokens, then 4 one-token steps, as the upstream decode (its cache holds keys after QK-norm
    and RoPE)."""
    g, cfg, params = reference3("model_dense")
    ids = g[ids_key]
    mask = np.ones_like(ids) if mask_key is None else g[mask_key]
    got = decode(MiniMindForCausalLM(cfg), params, jnp.asarray(ids), jnp.asarray(mask, jnp.int32), prefill=8)
    np.testing.assert_allclose(got, g[want_key], atol=ATOL, rtol=0)


def test_greedy_generate_follows_the_full_forward(reference3):
    """generate() (KV cache, per-core decode layout on CPU) on left-padded prompts picks the argmax of a full
    forward over what it generated."""
    g, cfg, params = reference3("model_dense")
    model = MiniMindForCausalLM(cfg)
    prompt, mask = g["padded_input_ids"][:, :8], g["padded_attention_mask"][:, :8]
    out = generate(model, params, prompt, mask, max_new_tokens=4, temperature=0.0, eos_token_id=None)
    full_mask = np.concatenate([mask, np.ones((3, 4), mask.dtype)], axis=1)
    logits = forward(model, params, out.sequences, jnp.asarray(full_mask)).logits
    np.testing.assert_array_equal(out.sequences[:, 8:], np.argmax(logits[:, 7:-1], axis=-1))


def test_moe_logits_aux_and_router_logits(reference3):
    g, cfg, params = reference3("model_moe")
    assert cfg.use_moe and (cfg.num_experts_per_tok, cfg.n_shared_experts) == (1, 0)
    model = MiniMindForCausalLM(cfg)
    ids = jnp.asarray(g["input_ids"])
    out = forward(model, params, ids)
    np.testing.assert_allclose(out.logits, g["logits"], atol=ATOL, rtol=0)
    assert float(out.aux_loss) == float(g["aux_loss_eval"]) == 0.0

    out, state = forward_sown(model, params, ids)
    np.testing.assert_allclose(out.logits, g["logits"], atol=ATOL, rtol=0)      # no dropout: train = eval
    np.testing.assert_allclose(float(out.aux_loss), float(g["aux_loss_train"]), atol=AUX_ATOL, rtol=0)
    layers = [state["intermediates"]["model"][f"layers_{i}"]["mlp"] for i in range(cfg.num_hidden_layers)]
    np.testing.assert_allclose([float(m["aux_loss"][0]) for m in layers], g["aux_loss_train_per_layer"],
                               atol=AUX_ATOL, rtol=0)
    np.testing.assert_allclose(np.stack([m["router_logits"][0] for m in layers]), g["router_logits"], atol=ATOL,
                               rtol=0)


def test_moe_top2(reference3):
    """The same weights with num_experts_per_tok=2: renormalised pair weights, and an aux loss whose pick
    fractions sum to k."""
    g, cfg, params = reference3("model_moe", config_key="config_top2_json")
    assert cfg.num_experts_per_tok == 2
    model = MiniMindForCausalLM(cfg)
    ids = jnp.asarray(g["input_ids"])
    np.testing.assert_allclose(forward(model, params, ids).logits, g["top2_logits"], atol=ATOL, rtol=0)
    aux = forward(model, params, ids, train=True).aux_loss
    np.testing.assert_allclose(float(aux), float(g["top2_aux_loss_train"]), atol=AUX_ATOL, rtol=0)


def test_yarn_long_row_and_short_rows(reference3):
    g, cfg, params = reference3("model_yarn")
    assert cfg.inference_rope_scaling
    model = MiniMindForCausalLM(cfg)
    out = forward(model, params, jnp.asarray(g["input_ids"]), return_hidden=True)       # 2100 > 2048 positions
    np.testing.assert_allclose(out.hidden_states, g["hidden"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.logits[:, g["logit_positions"]], g["logits_at_positions"], atol=ATOL, rtol=0)
    short = forward(model, params, jnp.asarray(g["short_input_ids"])).logits
    np.testing.assert_allclose(short, g["short_logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset, head_dim", [("tiny", 8), ("small", 96)])
@pytest.mark.parametrize("yarn", [False, True])
@pytest.mark.parametrize("traced", [False, True])
def test_rope_tables(golden3, preset, head_dim, yarn, traced):
    """Built in float32 like the reference (angle = f32(pos) * f32(inv_freq)), so even position 32767 matches,
    from positions known while tracing (NumPy constants) and from traced ones (decoding) alike."""
    g = golden3("model_yarn")
    cfg = MiniMindConfig.from_preset(preset, generation=3, inference_rope_scaling=yarn)
    assert cfg.head_dim == head_dim
    positions = np.asarray(g["rope_positions"], np.int32)
    cos, sin = jax.jit(rope_tables, static_argnums=1)(positions, cfg) if traced else rope_tables(positions, cfg)
    kind = "yarn" if yarn else "plain"
    np.testing.assert_allclose(cos, g[f"rope_cos_hd{head_dim}_{kind}"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(sin, g[f"rope_sin_hd{head_dim}_{kind}"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset, total, active", [("small", 63_912_192, 63_912_192),
                                                   ("moe", 198_416_640, 63_936_768)])
def test_preset_param_counts_equal_the_reference(preset, total, active):
    cfg = MiniMindConfig.from_preset(preset, generation=3)
    shapes = jax.eval_shape(MiniMindForCausalLM(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    assert count_params(shapes) == total
    assert count_active_params(shapes, cfg) == active


def test_generation_defaults_and_presets():
    """MiniMindConfig(generation=3) is the upstream minimind-3 default; presets keep their names per generation,
    and fields derived from hidden_size follow an override."""
    cfg = MiniMindConfig(generation=3)
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.rms_norm_eps) == (
        768, 4, 96, 2432, 1e-6)
    assert (cfg.num_experts_per_tok, cfg.n_shared_experts, cfg.aux_loss_alpha, cfg.seq_aux) == (1, 0, 5e-4, False)
    assert cfg.qk_norm and cfg.norm_weight_fp32
    assert set(PRESETS3) == {"tiny", "small", "moe"}
    tiny = MiniMindConfig.from_preset("tiny", generation=3)
    assert (tiny.hidden_size, tiny.num_attention_heads, tiny.num_key_value_heads, tiny.head_dim,
            tiny.intermediate_size) == (64, 8, 4, 8, 256)
    assert MiniMindConfig.from_preset("small", generation=3, hidden_size=512).intermediate_size == 1664
    assert MiniMindConfig.from_preset("small").generation == 2
    with pytest.raises(ValueError, match="unknown preset 'base' for generation 3: choose one of tiny, small, moe"):
        MiniMindConfig.from_preset("base", generation=3)


def test_head_dim_free_of_hidden_over_heads():
    """head_dim given explicitly (q heads x head_dim != hidden): projections, norms and the cache follow it."""
    cfg = MiniMindConfig.from_preset("tiny", generation=3, vocab_size=32, head_dim=12)
    model = MiniMindForCausalLM(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    attn = params["model"]["layers_0"]["self_attn"]
    assert attn["q_proj"]["kernel"].shape == (64, 96) and attn["o_proj"]["kernel"].shape == (96, 64)
    assert attn["k_norm"]["weight"].shape == (12,)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(1.0 if s.ndim == 1 else 0.0, 0.1, s.shape).astype(np.float32), params)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 6)), jnp.int32)
    full = forward(model, params, ids).logits
    np.testing.assert_allclose(decode(model, params, ids, jnp.ones_like(ids), prefill=4), full[:, 4:], atol=1e-5)


def test_config_json_round_trip():
    for cfg in (MiniMindConfig.from_preset("moe", generation=3, dropout=0.1),
                MiniMindConfig.from_preset("tiny", head_dim=32)):              # a generation-2 config with a gen-3 field
        assert MiniMindConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("bad, message", [(dict(generation=4), "generation 4 is not supported"),
                                          (dict(generation=3, seq_aux=True), "no per-sequence aux loss"),
                                          (dict(generation=3, n_shared_experts=1), "no shared experts"),
                                          (dict(generation=3, head_dim=7), "head_dim 7 must be even"),
                                          (dict(generation=3, use_moe=True, num_experts_per_tok=5),
                                           "num_experts_per_tok")])
def test_invalid_generation3_configs_fail_with_one_line(bad, message):
    with pytest.raises(ValueError, match=message) as e:
        MiniMindConfig(**bad)
    assert "\n" not in str(e.value)


def test_detect_generation_from_reference_keys():
    assert detect_generation({"hidden_size": 64, "num_experts": 4, "router_aux_loss_coef": 5e-4}) == 3
    assert detect_generation({"hidden_size": 64, "n_routed_experts": 4, "seq_aux": True}) == 2
    assert detect_generation({"hidden_size": 64}) is None
    with pytest.raises(ValueError, match="config mixes generation-2 keys \\(seq_aux\\) with generation-3 keys "
                                         "\\(num_experts\\)"):
        detect_generation({"num_experts": 4, "seq_aux": True})
