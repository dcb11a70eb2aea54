"""A bf16 train step runs its big matmuls on bf16 operands, forward and backward: the lowered StableHLO of
grad(loss) is read dot by dot (attention projections, attention, MLP or experts, lm_head), on the CPU paths and on
the accelerator paths (xla attention, grouped experts). float32 accumulation is allowed; a float32 operand is
allowed only under a bf16 dot algorithm (what jax.nn.dot_product_attention asks for)."""
import re

import jax
import jax.numpy as jnp
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM, attention, get_policy, moe

DOT = re.compile(r"stablehlo\.(?:dot_general|ragged_dot).*?: \(tensor<([0-9x]+)x(\w+)>, tensor<([0-9x]+)x(\w+)>")


def big(shape: str) -> bool:
    """At least two dims of 16 or more: a real product, not the k-way routing combine or the router."""
    return sum(int(d) >= 16 for d in shape.split("x")) >= 2


def dots_of(attn, experts, use_moe):
    cfg = MiniMindConfig.from_preset("tiny", hidden_size=96, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=160, vocab_size=512, num_hidden_layers=1, use_moe=use_moe)
    model = MiniMindForCausalLM(cfg, get_policy("bf16"))
    ids = jnp.zeros((2, 24), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]

    def loss(p):
        out = model.apply({"params": p}, ids, jnp.ones_like(ids), train=True)
        return jnp.mean(jax.nn.log_softmax(out.logits)[..., 0]) + out.aux_loss

    old = attention.IMPL, moe.IMPL
    attention.IMPL, moe.IMPL = attn, experts
    try:
        text = jax.jit(jax.grad(loss)).lower(params).as_text()
    finally:
        attention.IMPL, moe.IMPL = old
    return [(line, m.groups()) for line in text.splitlines() if (m := DOT.search(line))]


@pytest.mark.parametrize("attn,experts,use_moe", [("grouped", "slab", False), ("grouped", "slab", True),
                                                  ("xla", "grouped", False), ("xla", "grouped", True)])
def test_bf16_step_keeps_bf16_operands(attn, experts, use_moe):
    found = dots_of(attn, experts, use_moe)
    checked = [(line, g) for line, g in found if big(g[0]) and big(g[2])]
    assert len(checked) >= 18                    # 7 projections + lm_head + attention, each fwd and bwd
    for line, (_, lhs, _, rhs) in checked:
        bf16_algorithm = "lhs_precision_type = bf16, rhs_precision_type = bf16" in line
        assert (lhs, rhs) == ("bf16", "bf16") or bf16_algorithm, line[:300]


COMPILED_DOT = re.compile(r"dot\(%([\w.\-]+), %([\w.\-]+)\).*?op_name=\"([^\"]+)\"")
DEFINED = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[")
PRODUCTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "self_attn/...")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="what XLA:CPU compiles the bf16 step to")
def test_bf16_step_compiles_to_bf16_products_on_cpu():
    """After XLA:CPU's passes too: it runs a bf16 product that contracts over an operand's rows (a weight gradient,
    attention's dK and dV) as a float32 product of upcast copies unless the operand is transposed first. Every
    projection's three products and attention's two products over the queries must keep bf16 operands."""
    cfg = MiniMindConfig.from_preset("tiny", hidden_size=96, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=160, vocab_size=512, num_hidden_layers=1)
    model = MiniMindForCausalLM(cfg, get_policy("bf16"))
    ids = jnp.zeros((2, 24), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]

    def loss(p):
        return jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, ids, train=True).logits)[..., 0])

    text = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    dtype = {m.group(1): m.group(2) for line in text.splitlines() if (m := DEFINED.match(line))}
    products = [(dtype[a], dtype[b], name) for a, b, name in COMPILED_DOT.findall(text)
                if any(p in name for p in PRODUCTS)]
    assert len(products) >= 3 * 8 + 2                # 8 projections forward, input and weight gradients; dK, dV
    assert all(a == b == "bf16" for a, b, _ in products), [p for p in products if p[:2] != ("bf16", "bf16")]
