"""MiniMindConfig: the reference's fields and defaults, presets with the reference's parameter counts, JSON."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM, get_policy
from minimind_jax.config import PRESETS, count_params

SPEC_DEFAULTS = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                     vocab_size=6400, intermediate_size=1408, max_position_embeddings=32768, rms_norm_eps=1e-5,
                     rope_theta=1e6, inference_rope_scaling=False, dropout=0.0, hidden_act="silu", bos_token_id=1,
                     eos_token_id=2, use_moe=False, num_experts_per_tok=2, n_routed_experts=4, n_shared_experts=1,
                     scoring_func="softmax", aux_loss_alpha=0.01, seq_aux=True, norm_topk_prob=True)


def test_defaults_are_the_reference_ones():
    assert MiniMindConfig().to_dict() == SPEC_DEFAULTS
    assert MiniMindConfig().head_dim == 64


@pytest.mark.parametrize("hidden, inter", [(512, 1408), (768, 2048), (640, 1728), (64, 192), (128, 384)])
def test_intermediate_size_derivation(hidden, inter):
    """64 * ceil(int(hidden * 8/3) / 64), unless given."""
    assert MiniMindConfig(hidden_size=hidden).intermediate_size == inter
    assert MiniMindConfig(hidden_size=hidden, intermediate_size=100).intermediate_size == 100


@pytest.mark.parametrize("preset, expected", [("small", 25_829_888), ("base", 104_030_976), ("moe", 145_029_760)])
def test_preset_param_counts_equal_the_reference(preset, expected):
    cfg = MiniMindConfig.from_preset(preset)
    shapes = jax.eval_shape(MiniMindForCausalLM(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    assert count_params(shapes["params"]) == expected


def test_presets():
    tiny = MiniMindConfig.from_preset("tiny")
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads, tiny.num_key_value_heads,
            tiny.vocab_size) == (64, 2, 4, 2, 6400)
    moe = MiniMindConfig.from_preset("moe")
    assert moe.use_moe and (moe.hidden_size, moe.num_hidden_layers) == (640, 8)
    assert set(PRESETS) == {"tiny", "small", "base", "moe"}
    over = MiniMindConfig.from_preset("small", hidden_size=768, use_moe=True)
    assert over.intermediate_size == 2048 and over.use_moe          # derived width follows the override
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        MiniMindConfig.from_preset("huge")


def test_json_round_trip_and_unknown_keys():
    cfg = MiniMindConfig.from_preset("moe", dropout=0.1, seq_aux=False)
    assert MiniMindConfig.from_json(cfg.to_json()) == cfg
    hf = {**cfg.to_dict(), "architectures": ["MiniMindForCausalLM"], "flash_attn": True, "model_type": "minimind"}
    assert MiniMindConfig.from_dict(hf) == cfg


def test_frozen_and_hashable():
    """A static argument of jax.jit and an attribute of a Flax module must be hashable and immutable."""
    cfg = MiniMindConfig.from_preset("tiny")
    assert hash(cfg) == hash(MiniMindConfig.from_preset("tiny"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3


@pytest.mark.parametrize("bad, message", [(dict(hidden_size=100, num_attention_heads=8), "not divisible"),
                                          (dict(num_attention_heads=8, num_key_value_heads=3), "not divisible"),
                                          (dict(hidden_act="gelu"), "not supported"),
                                          (dict(use_moe=True, num_experts_per_tok=5), "num_experts_per_tok")])
def test_invalid_configs_fail_with_one_line(bad, message):
    with pytest.raises(ValueError, match=message) as e:
        MiniMindConfig(**bad)
    assert "\n" not in str(e.value)


def test_policies():
    for names, compute in ((("fp32", "float32"), np.float32), (("bf16", "bfloat16"), jnp.bfloat16),
                           (("fp16", "float16"), np.float16)):
        a, b = (get_policy(n) for n in names)
        assert a == b and a.compute_dtype == compute
        assert a.param_dtype == np.float32 and a.output_dtype == np.float32     # fp32 masters, fp32 logits
    with pytest.raises(ValueError, match="unknown precision"):
        get_policy("int8")
