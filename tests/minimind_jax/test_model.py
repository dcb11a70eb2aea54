"""MiniMindForCausalLM against the reference's own outputs (../shared/golden/model_*.npz), plus the properties the
rest of the project leans on: the attention gradient, precision policies, dropout, padding, the aux loss."""
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import CausalLMOutput, MiniMindConfig, MiniMindForCausalLM, get_policy
from minimind_jax.convert import params_from_torch
from minimind_jax.model import (attention_bias, block_experts, causal_attention, dense_experts,
                                grouped_attention)

GOLDEN = ["model_dense", "model_dense_padded", "model_moe", "model_moe_tokenaux", "model_yarn", "model_vocab6400"]


@partial(jax.jit, static_argnames=("model", "train"))
def forward(model, params, ids, mask, train=False):
    return model.apply({"params": params}, ids, mask, train)


def reference_case(golden, name):
    g = golden(name)
    cfg = MiniMindConfig.from_dict(json.loads(str(g["config_json"])))
    params = params_from_torch({k[3:]: v for k, v in g.items() if k.startswith("sd/")}, cfg)
    return g, cfg, params


@pytest.mark.parametrize("name", GOLDEN)
def test_logits_and_aux_match_reference(golden, name):
    g, cfg, params = reference_case(golden, name)
    model = MiniMindForCausalLM(cfg)
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    real = g["attention_mask"][..., None] == 1                   # padded positions are not compared
    for train, logits_key in ((False, "logits"), (True, "logits_train")):
        out = forward(model, params, ids, mask, train)
        assert isinstance(out, CausalLMOutput)
        assert out.logits.dtype == jnp.float32 and out.logits.shape == g[logits_key].shape
        np.testing.assert_allclose(np.where(real, out.logits, 0), np.where(real, g[logits_key], 0), atol=1e-4, rtol=0)
    np.testing.assert_allclose(float(out.aux_loss), float(g["aux_loss_train"]), atol=1e-6, rtol=0)
    if cfg.use_moe:                                              # the golden aux is not trivially zero
        assert float(g["aux_loss_train"]) > 1e-3
    assert float(forward(model, params, ids, mask, False).aux_loss) == 0.0      # no aux loss at inference


def test_padding_does_not_change_real_positions(golden):
    """A left-padded row gives the logits of the same row unpadded (positions are absolute, so the pad shifts
    RoPE by a constant, which attention cannot see)."""
    g, cfg, params = reference_case(golden, "model_dense_padded")
    model = MiniMindForCausalLM(cfg)
    ids, mask = g["input_ids"], g["attention_mask"]
    padded = forward(model, params, jnp.asarray(ids), jnp.asarray(mask)).logits
    for b in range(ids.shape[0]):
        real = mask[b] == 1
        alone = forward(model, params, jnp.asarray(ids[b:b + 1, real]), None).logits[0]
        np.testing.assert_allclose(padded[b, real], alone, atol=1e-4, rtol=0)


def naive_attention(q, k, v, bias, dropout_mask):
    """The textbook formula with kv heads repeated: what grouped_attention must equal, values and gradients."""
    B, KV, RT, HD = q.shape
    T = bias.shape[-2]
    R = RT // T
    qh = q.reshape(B, KV * R, T, HD)
    kh, vh = jnp.repeat(k, R, axis=1), jnp.repeat(v, R, axis=1)
    s = jnp.einsum("bhqd,bhsd->bhqs", qh, kh) + bias[:, None]
    p = jax.nn.softmax(s, axis=-1)
    if dropout_mask is not None:
        p = p * dropout_mask.reshape(B, KV * R, T, -1)
    return jnp.einsum("bhqs,bhsd->bhqd", p, vh).reshape(B, KV, RT, HD)


def random_params(model, seed=0, ids_shape=(1, 8)):
    """Params of the model's shapes from NumPy (no init to compile): kernels ~ N(0, 0.02), norm weights ~ 1."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(ids_shape, jnp.int32))["params"]
    rng = np.random.default_rng(seed)
    draw = lambda path, s: (1.0 if path[-1].key == "weight" else 0.0) + rng.normal(0, 0.02, s.shape).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("with_dropout", [False, True])
def test_attention_custom_gradient_matches_autodiff(with_dropout):
    B, KV, R, T, HD = 2, 2, 3, 7, 8
    ks = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(ks[0], (B, KV, R * T, HD))
    k, v = jax.random.normal(ks[1], (B, KV, T, HD)), jax.random.normal(ks[2], (B, KV, T, HD))
    key_mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    bias = attention_bias(jnp.arange(T), key_mask, T)
    drop = jax.random.bernoulli(ks[3], 0.8, (B, KV, R * T, T)) / 0.8 if with_dropout else None
    w = jax.random.normal(ks[4], (B, KV, R * T, HD))

    @jax.jit
    def both(q, k, v):                      # (output, d/dq, d/dk, d/dv) of each, in one compiled program
        def value_and_grads(f):
            loss = lambda q, k, v: jnp.sum(w * f(q, k, v, bias, drop))
            return (f(q, k, v, bias, drop), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v))
        return value_and_grads(grouped_attention), value_and_grads(naive_attention)

    for got, want in zip(*both(q, k, v)):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("blocks", [2, 3, 5])
def test_causal_query_blocks_equal_one_block(blocks):
    """Skipping the masked upper triangle block by block changes nothing: outputs and gradients, with left
    padding and dropout, at an uneven split (T = 11)."""
    B, KV, R, T, HD = 2, 2, 2, 11, 8
    ks = jax.random.split(jax.random.key(1), 5)
    q = jax.random.normal(ks[0], (B, KV, R * T, HD))
    k, v = jax.random.normal(ks[1], (B, KV, T, HD)), jax.random.normal(ks[2], (B, KV, T, HD))
    bias = attention_bias(jnp.arange(T), jnp.array([[0, 0, 0] + [1] * 8, [1] * 11]), T)
    drop = jax.random.bernoulli(ks[3], 0.8, (B, KV, R * T, T)) / 0.8
    w = jax.random.normal(ks[4], (B, KV, R * T, HD))

    def value_and_grads(n):
        loss = lambda q, k, v: jnp.sum(w * causal_attention(q, k, v, bias, drop, n))
        return (causal_attention(q, k, v, bias, drop, n), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v))

    for got, want in zip(value_and_grads(blocks), value_and_grads(1)):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("block", [1, 3, 8])
def test_block_sparse_experts_equal_dense(block):
    """The block-sparse MoE dispatch computes the dense one's sum exactly (values, and gradients for the input,
    every expert weight and the routing weights), also when one expert gets no token."""
    N, H, I, E, k = 37, 8, 12, 4, 2
    ks = jax.random.split(jax.random.key(2), 6)
    x = jax.random.normal(ks[0], (N, H))
    w_gate, w_up = jax.random.normal(ks[1], (E, H, I)), jax.random.normal(ks[2], (E, H, I))
    w_down = jax.random.normal(ks[3], (E, I, H))
    logits = jax.random.normal(ks[4], (N, E)).at[:, 3].set(-9.0)               # expert 3 is never chosen
    topk_weight, topk_idx = jax.lax.top_k(jax.nn.softmax(logits), k)
    target = jax.random.normal(ks[5], (N, H))

    def value_and_grads(f):
        loss = lambda *a: jnp.sum(target * f(*a, topk_idx))
        args = (x, w_gate, w_up, w_down, topk_weight)
        return (f(*args, topk_idx), *jax.grad(loss, argnums=range(5))(*args))

    for got, want in zip(value_and_grads(partial(block_experts, block=block)), value_and_grads(dense_experts)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def tiny():
    cfg = MiniMindConfig.from_preset("tiny", vocab_size=256)
    model = MiniMindForCausalLM(cfg)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12)), jnp.int32)
    return cfg, model, random_params(model), ids


def test_param_tree_layout(tiny):
    cfg, _, params, _ = tiny
    m = params["model"]
    assert set(params) == {"model"}                               # lm_head is tied to embed_tokens
    assert m["embed_tokens"].shape == (cfg.vocab_size, cfg.hidden_size)
    assert len([k for k in m if k.startswith("layers_")]) == cfg.num_hidden_layers
    attn = m["layers_0"]["self_attn"]
    assert attn["q_proj"]["kernel"].shape == (64, 64) and attn["k_proj"]["kernel"].shape == (64, 32)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_policy_close_to_fp32(tiny, precision):
    cfg, model, params, ids = tiny
    low = MiniMindForCausalLM(cfg, get_policy(precision))
    ref = forward(model, params, ids, None).logits
    out = forward(low, params, ids, None)
    assert out.logits.dtype == jnp.float32                        # logits always come out in float32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32        # master weights stay float32
    err = float(jnp.max(jnp.abs(out.logits - ref)))
    assert 0 < err < 0.05 * float(jnp.max(jnp.abs(ref)))         # lower precision, same function


def test_dropout_only_when_training(tiny):
    cfg, _, params, ids = tiny
    model = MiniMindForCausalLM(MiniMindConfig.from_dict({**cfg.to_dict(), "dropout": 0.5}))
    apply = jax.jit(lambda ids, key: model.apply({"params": params}, ids, train=True, rngs={"dropout": key}).logits)
    a, b, c = apply(ids, jax.random.key(1)), apply(ids, jax.random.key(1)), apply(ids, jax.random.key(2))
    np.testing.assert_array_equal(a, b)                           # dropout is a pure function of the key
    assert not np.allclose(a, c)
    eval_logits = forward(model, params, ids, None).logits
    np.testing.assert_allclose(eval_logits, forward(tiny[1], params, ids, None).logits, atol=1e-6)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, ids, train=True,
                                                            rngs={"dropout": jax.random.key(3)}).logits ** 2)))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_moe_aux_loss_is_differentiable_and_routes_gradients():
    cfg = MiniMindConfig.from_preset("tiny", use_moe=True, vocab_size=128)
    model = MiniMindForCausalLM(cfg)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 128, (2, 10)), jnp.int32)
    params = random_params(model)
    experts = params["model"]["layers_0"]["mlp"]["experts"]
    assert experts["gate_proj"]["kernel"].shape == (cfg.n_routed_experts, 64, cfg.intermediate_size)  # stacked
    aux_grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, ids, train=True).aux_loss))(params)
    router = aux_grad["model"]["layers_0"]["mlp"]["gate"]["kernel"]
    assert float(jnp.abs(router).sum()) > 0                       # the balance loss trains the router


def test_hidden_states_and_shapes(tiny):
    cfg, model, params, ids = tiny
    out = jax.jit(lambda p, ids: model.apply({"params": p}, ids, return_hidden=True))(params, ids)
    assert out.hidden_states.shape == (*ids.shape, cfg.hidden_size)
    assert out.cache is None
    logits = jnp.einsum("bth,vh->btv", out.hidden_states, params["model"]["embed_tokens"])   # tied lm_head
    np.testing.assert_allclose(out.logits, logits, atol=1e-4)
