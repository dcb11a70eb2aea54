"""Helpers of the model-library tests."""
import jax
import jax.numpy as jnp
import numpy as np

from minimind_jax import MiniMindConfig, MiniMindForCausalLM


def peaked_tiny_lm(spread: float = 0.1):
    """(cfg, model, params) of a tiny random model whose logits have clear maxima (N(0, 1) embeddings), so greedy
    answers are stable; `spread` is the std of every other weight (larger: answers depend more on the question)."""
    cfg = MiniMindConfig.from_preset("tiny")
    model = MiniMindForCausalLM(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, s: rng.normal(0, 1.0 if p[-1].key == "embed_tokens" else spread, s.shape).astype(np.float32), shapes)
    return cfg, model, params
