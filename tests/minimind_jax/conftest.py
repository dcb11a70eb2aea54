"""Fixtures shared by the model-library tests."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.convert import load_reference


@pytest.fixture(scope="module")
def random_lm():
    """(cfg, model, params): a tiny 64-token LM with N(0, 0.1) weights, larger than init's so heads and adapters
    see non-trivial activations."""
    cfg = MiniMindConfig.from_preset("tiny", vocab_size=64)
    model = MiniMindForCausalLM(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    return cfg, model, jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)




@pytest.fixture
def reference3(golden3):
    """reference3('model_moe') -> (golden arrays, cfg, params) through load_reference, as a user loads a
    minimind-3 checkpoint with its config. model_yarn runs model_dense's weights."""
    def load(name: str, config_key: str = "config_json"):
        g = golden3(name)
        weights = g if name != "model_yarn" else golden3("model_dense")
        sd = {k[3:]: v for k, v in weights.items() if k.startswith("sd/")}
        cfg, params = load_reference(sd, json.loads(str(g[config_key])))
        return g, cfg, params
    return load


@pytest.fixture(scope="module")
def tok3():
    """MiniMind-3's tokenizer (shipped)."""
    from minimind_jax.tokenizer import SAMPLE3_TOKENIZER_DIR, Tokenizer
    return Tokenizer.load(SAMPLE3_TOKENIZER_DIR)


@pytest.fixture
def gold3(shared_path):
    """The MiniMind-3 template and data goldens, data_minimind3.json."""
    return json.loads(shared_path("minimind3/golden/data_minimind3.json").read_text())
