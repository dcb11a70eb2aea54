"""Weight interop: the reference's names and layouts, exact round trips, files, and one-line errors."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.convert import load_weights, params_from_torch, params_to_torch, reference_shapes, save_weights


def golden_state_dict(golden, name):
    g = golden(name)
    return MiniMindConfig.from_dict(json.loads(str(g["config_json"]))), {k[3:]: v for k, v in g.items()
                                                                        if k.startswith("sd/")}


def random_params(cfg, seed=0):
    shapes = jax.eval_shape(MiniMindForCausalLM(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes["params"])


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["model_dense", "model_moe", "model_moe_tokenaux"])
def test_reference_state_dict_round_trip(golden, name):
    cfg, sd = golden_state_dict(golden, name)
    back = params_to_torch(params_from_torch(sd, cfg), cfg)
    assert set(back) == set(sd) == set(reference_shapes(cfg))
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    np.testing.assert_array_equal(back["lm_head.weight"], back["model.embed_tokens.weight"])   # tied, both names


@pytest.mark.parametrize("overrides", [dict(), dict(use_moe=True, n_shared_experts=2),
                                       dict(use_moe=True, n_shared_experts=0, n_routed_experts=3)])
def test_params_round_trip_is_exact(overrides):
    cfg = MiniMindConfig.from_preset("tiny", vocab_size=64, **overrides)
    params = random_params(cfg)
    sd = params_to_torch(params, cfg)
    assert all(v.flags["C_CONTIGUOUS"] for v in sd.values())
    assert_trees_equal(params_from_torch(sd, cfg), params)
    if cfg.use_moe:   # stacked on load, split on save: expert e of layer 0 is slice e of the stack
        e = cfg.n_routed_experts - 1
        np.testing.assert_array_equal(sd[f"model.layers.0.mlp.experts.{e}.up_proj.weight"],
                                      params["model"]["layers_0"]["mlp"]["experts"]["up_proj"]["kernel"][e].T)


def test_safetensors_files(tmp_path):
    cfg = MiniMindConfig.from_preset("tiny", vocab_size=64, use_moe=True)
    params = random_params(cfg)
    save_weights(tmp_path / "w32.safetensors", params, cfg, dtype=np.float32)
    assert_trees_equal(jax.device_get(load_weights(tmp_path / "w32.safetensors", cfg)), params)
    save_weights(tmp_path / "w16.safetensors", params, cfg)                     # fp16, like the reference
    from safetensors.numpy import load_file
    stored = load_file(str(tmp_path / "w16.safetensors"))
    assert stored["lm_head.weight"].dtype == np.float16 and set(stored) == set(reference_shapes(cfg))
    half = jax.tree.map(lambda x: x.astype(np.float16).astype(np.float32), params)
    assert_trees_equal(jax.device_get(load_weights(tmp_path / "w16.safetensors", cfg)), half)


def test_reference_pth(tmp_path, golden):
    torch = pytest.importorskip("torch")
    cfg, sd = golden_state_dict(golden, "model_moe")
    torch.save({k: torch.from_numpy(v).half() for k, v in sd.items()}, tmp_path / "moe.pth")
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "step": 3}, tmp_path / "resume.pth")
    half = params_from_torch({k: v.astype(np.float16).astype(np.float32) for k, v in sd.items()}, cfg)
    assert_trees_equal(jax.device_get(load_weights(tmp_path / "moe.pth", cfg)), half)
    assert_trees_equal(jax.device_get(load_weights(tmp_path / "resume.pth", cfg)), params_from_torch(sd, cfg))


def test_pth_without_torch_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "x.pth").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)                             # import torch -> ImportError
    with pytest.raises(ImportError, match=r"x\.pth: reading a \.pth needs torch: pip install 'minimind-jax\[torch\]'"):
        load_weights(tmp_path / "x.pth", MiniMindConfig.from_preset("tiny"))


def test_errors_name_the_file_and_tensor(tmp_path):
    cfg = MiniMindConfig.from_preset("tiny", vocab_size=64)
    sd = params_to_torch(random_params(cfg), cfg)
    save_weights(tmp_path / "w.safetensors", random_params(cfg), cfg)
    other_vocab = MiniMindConfig.from_preset("tiny", vocab_size=128)
    with pytest.raises(ValueError, match=r"w\.safetensors: tensor model\.embed_tokens\.weight has shape \(64, 64\) "
                                         r"but the config expects \(128, 64\)"):
        load_weights(tmp_path / "w.safetensors", other_vocab)
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.0\.mlp\.gate\.weight"):
        params_from_torch(sd, MiniMindConfig.from_preset("tiny", vocab_size=64, use_moe=True))
    deeper = MiniMindConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"unexpected tensor model\.layers\.2\."):
        params_from_torch(params_to_torch(random_params(deeper), deeper), cfg)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        params_from_torch({**sd, "lm_head.weight": sd["lm_head.weight"] + 1}, cfg)
    with pytest.raises(FileNotFoundError, match="nope.safetensors: no such weights file"):
        load_weights(tmp_path / "nope.safetensors", cfg)
