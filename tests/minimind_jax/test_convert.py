"""Weight interop: the reference's names and layouts (both generations), Qwen3's, exact round trips, files, and
one-line errors."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.convert import (from_qwen3, load_reference, load_weights, params_from_torch, params_to_torch,
                                  load_qwen3, qwen3_config, reference_config, reference_shapes, save_qwen3,
                                  save_weights, to_qwen3)


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


# ---- minimind-3 (generation 3) --------------------------------------------------------------------------------

def reference3_state_dict(golden3, name):
    g = golden3(name)
    return json.loads(str(g["config_json"])), {k[3:]: v for k, v in g.items() if k.startswith("sd/")}, g


@pytest.mark.parametrize("name", ["model_dense", "model_moe"])
def test_generation3_state_dict_and_config_round_trip(golden3, name):
    """load_reference reads the upstream names (QK-norm, router, experts) and config; params_to_torch and
    reference_config give them back exactly."""
    config, sd, g = reference3_state_dict(golden3, name)
    cfg, params = load_reference(sd, config)
    assert cfg.generation == 3 and cfg.use_moe == (name == "model_moe")
    assert params["model"]["layers_1"]["self_attn"]["q_norm"]["weight"].shape == (cfg.head_dim,)
    back = params_to_torch(params, cfg)
    assert set(back) == set(g["sd_keys"]) == set(sd) | {"lm_head.weight"}     # the golden stores the tied matrix once
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    assert reference_config(cfg) == config


def test_generation3_qwen3_round_trip_is_exact():
    for cfg in (MiniMindConfig.from_preset("tiny", generation=3, vocab_size=64),
                MiniMindConfig.from_preset("tiny", generation=3, vocab_size=64, use_moe=True, num_experts_per_tok=2),
                MiniMindConfig.from_preset("tiny", generation=3, vocab_size=64, inference_rope_scaling=True)):
        params = random_params(cfg)
        sd, hf = to_qwen3(params, cfg)
        assert hf["architectures"] == ["Qwen3MoeForCausalLM" if cfg.use_moe else "Qwen3ForCausalLM"]
        assert json.loads(json.dumps(hf)) == hf                  # a config.json
        cfg_back, params_back = from_qwen3(sd, hf)
        assert cfg_back == cfg
        assert_trees_equal(params_back, params)


def test_generation3_qwen3_refuses_what_minimind_lacks():
    cfg = MiniMindConfig.from_preset("tiny", generation=3, vocab_size=64)
    sd, hf = to_qwen3(random_params(cfg), cfg)
    for bad, message in ((dict(model_type="llama"), "model_type 'llama' is not Qwen3"),
                         (dict(tie_word_embeddings=False), "tie_word_embeddings=False has no MiniMind equivalent"),
                         (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "is not MiniMind's YaRN")):
        with pytest.raises(ValueError, match=message) as e:
            from_qwen3(sd, {**hf, **bad})
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="only a generation-3 config"):
        qwen3_config(MiniMindConfig.from_preset("tiny"))


def test_other_or_mixed_generation_is_a_one_line_error(golden, golden3):
    """A checkpoint of the other generation never loads partly (the reference's strict=False would)."""
    config3, sd3, _ = reference3_state_dict(golden3, "model_moe")
    cfg2, sd2 = golden_state_dict(golden, "model_moe")
    cases = [(lambda: load_reference(sd2, config3), "config is for generation 3 but the tensors are generation 2"),
             (lambda: load_reference(sd3, cfg2.to_dict()), "config is for generation 2 but the tensors are generation 3"),
             (lambda: params_from_torch(sd2, load_reference(sd3, config3)[0]),
              "missing tensor model.layers.0.self_attn.q_norm.weight .*a generation-2 checkpoint for a generation-3"),
             (lambda: params_from_torch(sd3, cfg2), "a generation-3 checkpoint for a generation-2 config"),
             (lambda: load_reference({**sd3, **{k: v for k, v in sd2.items() if "shared_experts" in k}}, config3),
              "mixes generation-3 tensors"),
             (lambda: load_reference({k: v for k, v in sd3.items() if "layers.1.self_attn.k_norm" not in k}, config3),
              "missing tensor model.layers.1.self_attn.k_norm.weight"),
             (lambda: load_reference(sd3, {**config3, "seq_aux": True}), "config mixes generation-2 keys")]
    for run, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            run()
        assert "\n" not in str(e.value)
    # Without generation keys in the config, the names decide.
    bare = {k: v for k, v in config3.items() if k not in ("num_experts", "router_aux_loss_coef")}
    assert load_reference(sd3, bare)[0].generation == 3


def test_generation3_loads_into_transformers_qwen3(reference3, tmp_path):
    """transformers' Qwen3ForCausalLM / Qwen3MoeForCausalLM load the saved export with no missing, unexpected or
    misshaped tensor and give our logits, padded rows included."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    for name in ("model_dense", "model_moe"):
        g, cfg, params = reference3(name)
        save_qwen3(tmp_path / name, params, cfg)
        model_class = transformers.Qwen3MoeForCausalLM if cfg.use_moe else transformers.Qwen3ForCausalLM
        model, info = model_class.from_pretrained(tmp_path / name, output_loading_info=True, attn_implementation="eager")
        assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        ids, mask = g["input_ids"], np.ones_like(g["input_ids"])
        if name == "model_dense":
            ids, mask = g["padded_input_ids"], g["padded_attention_mask"]
        ours = MiniMindForCausalLM(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)).logits
        with torch.no_grad():
            theirs = model.eval()(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.float().numpy()
        real = mask[..., None] == 1
        np.testing.assert_allclose(np.where(real, theirs, 0), np.where(real, ours, 0), atol=1e-4, rtol=0, err_msg=name)
        cfg_back, params_back = load_qwen3(tmp_path / name)
        assert cfg_back == cfg
        assert_trees_equal(jax.device_get(params_back), jax.device_get(params))
