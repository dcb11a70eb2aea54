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
