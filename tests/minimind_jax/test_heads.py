"""Critic (a value per position) and reward model (a score per row) on the MiniMind backbone."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindCritic, MiniMindRewardModel
from minimind_jax.convert import params_from_torch
from minimind_jax.heads import init_head_params, last_token_index

GOLDEN = ["model_dense", "model_dense_padded", "model_moe", "model_moe_tokenaux", "model_yarn", "model_vocab6400"]


@pytest.mark.parametrize("name", GOLDEN)
def test_critic_values_match_reference(golden, name):
    """The generation-2 golden critic reads the final-normed hidden states once, on the unmasked ids."""
    g = golden(name)
    cfg = MiniMindConfig.from_dict(json.loads(str(g["config_json"])))
    backbone = params_from_torch({k[3:]: v for k, v in g.items() if k.startswith("sd/")}, cfg)["model"]
    params = {"model": backbone, "value_head": {"kernel": g["value_head.weight"].T, "bias": g["value_head.bias"]}}
    values = jax.jit(MiniMindCritic(cfg).apply)({"params": params}, jnp.asarray(g["input_ids"]))
    assert values.dtype == jnp.float32 and values.shape == g["values"].shape
    np.testing.assert_allclose(values, g["values"], atol=1e-4, rtol=0)


def test_init_head_params_shares_the_backbone(random_lm):
    cfg, model, params = random_lm
    for head in (MiniMindCritic(cfg), MiniMindRewardModel(cfg)):
        hp = init_head_params(params, head, jax.random.key(1))
        assert set(hp) == {"model", head.head_name}
        assert hp["model"] is params["model"]                                  # the LM's arrays, not a copy
        assert hp[head.head_name]["kernel"].shape == (cfg.hidden_size, 1) and hp[head.head_name]["bias"].shape == (1,)


def test_critic_is_the_value_head_on_the_lm_hidden_states(random_lm):
    cfg, model, params = random_lm
    critic = MiniMindCritic(cfg)
    hp = init_head_params(params, critic, jax.random.key(1))
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 7)), jnp.int32)
    hidden = jax.jit(lambda p, ids: model.apply({"params": p}, ids, return_hidden=True).hidden_states)(params, ids)
    head = hp["value_head"]
    values = jax.jit(critic.apply)({"params": hp}, ids)
    np.testing.assert_allclose(values, (hidden @ head["kernel"])[..., 0] + head["bias"][0], atol=1e-5)


def test_reward_model_scores_the_last_real_token(random_lm):
    cfg, model, params = random_lm
    rm = MiniMindRewardModel(cfg)
    hp = init_head_params(params, rm, jax.random.key(1))
    score = jax.jit(rm.apply)
    row = np.random.default_rng(3).integers(3, 64, 5).astype(np.int32)
    alone = score({"params": hp}, jnp.asarray(row[None]), jnp.ones((1, 5), jnp.int32))
    right = np.array([[*row, 0, 0], [*row[:3], 0, 0, 0, 0]], np.int32)             # right padding: causal, so the
    s = score({"params": hp}, jnp.asarray(right), jnp.asarray((right != 0).astype(np.int32)))   # pads are unseen
    np.testing.assert_allclose(s[0], alone[0], atol=1e-5)
    prefix = score({"params": hp}, jnp.asarray(row[None, :3]), jnp.ones((1, 3), jnp.int32))
    np.testing.assert_allclose(s[1], prefix[0], atol=1e-5)
    left = np.array([[0, 0, *row]], np.int32)
    s_left = score({"params": hp}, jnp.asarray(left), jnp.asarray((left != 0).astype(np.int32)))
    np.testing.assert_allclose(s_left, alone, atol=1e-4)                         # left padding only shifts RoPE


def test_last_token_index():
    mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4, 1])


def test_generation3_critic_double_norm_matches_reference(reference3):
    """The minimind-3 reference critic normalises the final hidden states twice; `double_norm=True` reproduces
    its values (padded rows compared where the mask is 1), and the default single norm gives other values."""
    g, cfg, params = reference3("model_dense")
    hp = {"model": params["model"], "value_head": {"kernel": g["value_head.weight"].T, "bias": g["value_head.bias"]}}
    apply = jax.jit(lambda critic, ids, mask: critic.apply({"params": hp}, ids, mask), static_argnums=0)
    parity = MiniMindCritic(cfg, double_norm=True)
    values = apply(parity, jnp.asarray(g["input_ids"]), None)
    np.testing.assert_allclose(values, g["values"], atol=1e-4, rtol=0)
    mask = g["padded_attention_mask"]
    padded = apply(parity, jnp.asarray(g["padded_input_ids"]), jnp.asarray(mask))
    np.testing.assert_allclose(np.where(mask == 1, padded, 0), np.where(mask == 1, g["padded_values"], 0), atol=1e-4,
                               rtol=0)
    single = apply(MiniMindCritic(cfg), jnp.asarray(g["input_ids"]), None)
    assert float(jnp.abs(single - g["values"]).max()) > 1e-2
