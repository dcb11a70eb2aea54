"""Fixtures shared by the model-library tests."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM


@pytest.fixture(scope="module")
def random_lm():
    """(cfg, model, params): a tiny 64-token LM with N(0, 0.1) weights, larger than init's so heads and adapters
    see non-trivial activations."""
    cfg = MiniMindConfig.from_preset("tiny", vocab_size=64)
    model = MiniMindForCausalLM(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    return cfg, model, jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
