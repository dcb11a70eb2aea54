"""LoRA: adapters on exactly the square Linears, a no-op at init, y = Wx + B(Ax), gradients only to the adapters,
and the reference's saved names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.lora import apply_lora, init_lora, lora_from_torch, lora_targets, lora_to_torch


def test_targets_are_the_square_linears():
    cfg = MiniMindConfig.from_preset("small")
    shapes = jax.eval_shape(MiniMindForCausalLM(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    targets = lora_targets(shapes)
    assert {path[-1] for path in targets} == {"q_proj", "o_proj"}          # k/v (512 -> 128) and the MLP are not
    assert len(targets) == 2 * cfg.num_hidden_layers and set(targets.values()) == {(512, 512)}


def test_init_is_a_no_op(random_lm):
    cfg, _, params = random_lm
    lora = init_lora(jax.random.key(0), params, cfg, rank=4)
    q = lora["model"]["layers_1"]["self_attn"]["q_proj"]
    assert q["a"].shape == (64, 4) and q["b"].shape == (4, 64)
    assert float(jnp.abs(q["b"]).max()) == 0.0                              # B = 0
    a = np.concatenate([np.ravel(x["a"]) for layer in lora["model"].values() for x in layer["self_attn"].values()])
    assert 0.015 < a.std() < 0.025                                           # A ~ N(0, 0.02)
    merged = apply_lora(params, lora)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)


def test_effective_weight_and_gradients(random_lm):
    cfg, model, params = random_lm
    lora = init_lora(jax.random.key(0), params, cfg, rank=4)
    lora = jax.tree.map(lambda x: x + 0.01, lora)                            # B != 0 now
    q = lora["model"]["layers_0"]["self_attn"]["q_proj"]
    x = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    w = params["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    merged = apply_lora(params, lora)["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_allclose(x @ merged, x @ w + (x @ q["a"]) @ q["b"], atol=1e-5)   # y = Wx + B(Ax)

    ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 8)), jnp.int32)
    loss = lambda lora: jnp.mean(model.apply({"params": apply_lora(params, lora)}, ids).logits ** 2)
    grads = jax.jit(jax.grad(loss))(lora)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_reference_names_and_round_trip(random_lm):
    cfg, _, params = random_lm
    lora = init_lora(jax.random.key(0), params, cfg, rank=8)
    sd = lora_to_torch(lora, cfg)
    assert sd["model.layers.0.self_attn.q_proj.lora.A.weight"].shape == (8, 64)      # (rank, in)
    assert sd["model.layers.1.self_attn.o_proj.lora.B.weight"].shape == (64, 8)      # (out, rank)
    assert len(sd) == 2 * 2 * cfg.num_hidden_layers
    back = lora_from_torch(sd, params, cfg)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(lora)):
        np.testing.assert_array_equal(x, y)
    del sd["model.layers.1.self_attn.o_proj.lora.B.weight"]
    with pytest.raises(ValueError, match=r"missing LoRA tensor model\.layers\.1\.self_attn\.o_proj\.lora\.B\.weight"):
        lora_from_torch(sd, params, cfg)


def test_generation3_reference_adapters(reference3):
    """minimind-3's rank-16 adapters (q_proj and o_proj, the square Linears beside the QK-norms) load under the
    reference's names, save back exactly, and give the reference's logits."""
    g, cfg, params = reference3("model_dense")
    sd = {k[5:]: v for k, v in g.items() if k.startswith("lora/")}
    assert set(sd) == set(g["lora_keys"])
    lora = lora_from_torch(sd, params, cfg, rank=16)
    back = lora_to_torch(lora, cfg)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    logits = jax.jit(lambda p, ids: MiniMindForCausalLM(cfg).apply({"params": p}, ids).logits)(
        apply_lora(params, lora), jnp.asarray(g["lora_input_ids"]))
    np.testing.assert_allclose(logits, g["lora_logits"], atol=1e-4, rtol=0)
