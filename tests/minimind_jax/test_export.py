"""Export: GGUF and Hugging Face folders that read back to the same weights and compute the same logits."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.convert import load_weights, params_from_torch, params_to_torch, save_weights
from minimind_jax.tokenizer import DEFAULT_TOKENIZER_DIR, Tokenizer, apply_chat_template
from minimind_jax import export


def make_run(d, **overrides):
    """A trainer-style run directory (fp16 weights, like the trainer's) of a random tiny model ->
    (dir, cfg, float32 params exactly as read back from the fp16 file)."""
    cfg = MiniMindConfig.from_preset("tiny", **overrides)
    model = MiniMindForCausalLM(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
    d.mkdir(parents=True, exist_ok=True)
    save_weights(d / "weights.safetensors", params, cfg)
    (d / "config.json").write_text(cfg.to_json())
    return d, cfg, jax.tree.map(np.asarray, load_weights(d / "weights.safetensors", cfg))


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("dense") / "full_sft_64")


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("moe") / "full_sft_64_moe", use_moe=True, n_shared_experts=2)


def logits(cfg, params, ids):
    return np.asarray(MiniMindForCausalLM(cfg).apply({"params": params}, jnp.asarray(ids)).logits)


def reference_sd(params, cfg):
    sd = params_to_torch(params, cfg)
    sd.pop("lm_head.weight")
    return sd


# ---- GGUF -------------------------------------------------------------------------------------------------------

def read_gguf(path):
    gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install gguf")
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32) for t in reader.tensors}
    return {k: f.contents() for k, f in reader.fields.items()}, tensors, {t.name: t.tensor_type for t in reader.tensors}


@pytest.mark.parametrize("outtype", ["f16", "f32", "bf16"])
def test_gguf_reads_back(dense, tmp_path, outtype):
    """Every tensor under llama.cpp's name, with the model's values (q/k after undoing the RoPE permutation), in
    the asked dtype (norms f32), and the llama metadata and vocabulary."""
    d, cfg, params = dense
    out = tmp_path / "m.gguf"
    assert export.main(["--format", "gguf", str(d), str(out), "--outtype", outtype]) == 0
    meta, tensors, types = read_gguf(out)

    sd = reference_sd(params, cfg)
    want = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    for i in range(cfg.num_hidden_layers):
        want |= {f"blk.{i}.{g}": sd[f"model.layers.{i}.{r}"] for r, g in export.GGUF_LAYER_NAMES.items()}
    assert set(tensors) == set(want)
    for i in range(cfg.num_hidden_layers):
        for name, heads in (("attn_q", cfg.num_attention_heads), ("attn_k", cfg.num_key_value_heads)):
            key = f"blk.{i}.{name}.weight"
            assert not np.array_equal(tensors[key], want[key])                     # permuted ...
            tensors[key] = export.halve_rope_rows(tensors[key], heads)             # ... and exactly invertible
    for name, w in want.items():
        assert tensors[name].shape == w.shape, name
        np.testing.assert_allclose(tensors[name], w, rtol=1e-2 if outtype == "bf16" else 0, atol=0, err_msg=name)
    import gguf
    matrix_type = {"f16": gguf.GGMLQuantizationType.F16, "f32": gguf.GGMLQuantizationType.F32,
                   "bf16": gguf.GGMLQuantizationType.BF16}[outtype]
    assert types["blk.0.attn_q.weight"] == matrix_type and types["output_norm.weight"] == gguf.GGMLQuantizationType.F32

    assert meta["general.architecture"] == "llama"
    expect = {"llama.context_length": cfg.max_position_embeddings, "llama.embedding_length": cfg.hidden_size,
              "llama.block_count": cfg.num_hidden_layers, "llama.feed_forward_length": cfg.intermediate_size,
              "llama.attention.head_count": cfg.num_attention_heads,
              "llama.attention.head_count_kv": cfg.num_key_value_heads,
              "llama.rope.dimension_count": cfg.head_dim, "llama.vocab_size": cfg.vocab_size,
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
              "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": False,
              "tokenizer.ggml.model": "llama", "tokenizer.ggml.add_space_prefix": False}
    assert {k: meta[k] for k in expect} == expect
    assert meta["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    tok = Tokenizer.load()
    assert len(meta["tokenizer.ggml.tokens"]) == cfg.vocab_size == tok.vocab_size
    assert [meta["tokenizer.ggml.tokens"][i] for i in (0, 1, 2, 300)] == [tok.id_to_piece(i) for i in (0, 1, 2, 300)]
    assert meta["tokenizer.ggml.token_type"][:3] == [2, 3, 3] and meta["tokenizer.ggml.token_type"][10] == 6  # byte
    assert len(meta["tokenizer.ggml.scores"]) == cfg.vocab_size
    assert meta["tokenizer.chat_template"] == export.CHAT_TEMPLATE


def llama_cpp_forward(meta, t, ids):
    """What llama.cpp's `llama` graph computes from the GGUF's tensors, in numpy: RoPE on interleaved pairs
    (element 2i with 2i + 1), the tied output from token_embd."""
    H = meta["llama.embedding_length"]
    nh, nkv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    hd, eps = H // nh, meta["llama.attention.layer_norm_rms_epsilon"]
    T = len(ids)
    angles = np.arange(T)[:, None] * meta["llama.rope.freq_base"] ** (-np.arange(0, hd, 2) / hd)[None]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]              # [T, 1, hd/2]

    def rope(x):                                                               # [T, heads, hd]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    norm = lambda x, w: w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    x = t["token_embd.weight"][ids].astype(np.float64)
    causal = np.where(np.arange(T)[None] <= np.arange(T)[:, None], 0.0, -np.inf)
    for i in range(meta["llama.block_count"]):
        w = lambda n: t[f"blk.{i}.{n}.weight"]
        h = norm(x, w("attn_norm"))
        q = rope((h @ w("attn_q").T).reshape(T, nh, hd))
        k = np.repeat(rope((h @ w("attn_k").T).reshape(T, nkv, hd)), nh // nkv, axis=1)
        v = np.repeat((h @ w("attn_v").T).reshape(T, nkv, hd), nh // nkv, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", p, v).reshape(T, H) @ w("attn_output").T
        h = norm(x, w("ffn_norm"))
        gate = h @ w("ffn_gate").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    return norm(x, t["output_norm.weight"]) @ t["token_embd.weight"].T


def test_gguf_computes_minimind_logits_with_llama_cpp_rope(dense, tmp_path):
    """The permuted q/k under llama.cpp's interleaved RoPE give MiniMind's rotate-half logits."""
    d, cfg, params = dense
    export.export(d, tmp_path / "m.gguf", "gguf", outtype="f32")
    meta, tensors, _ = read_gguf(tmp_path / "m.gguf")
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, 24)
    np.testing.assert_allclose(llama_cpp_forward(meta, tensors, ids), logits(cfg, params, ids[None])[0],
                               atol=1e-4, rtol=0)


def test_gguf_byte_level_bpe_vocab(dense, tmp_path, shared_path):
    """MiniMind's own tokenizer.json goes in as llama.cpp's gpt2 model: tokens by id, merges, control specials."""
    d, cfg, _ = dense
    path = shared_path("minimind_tokenizer/tokenizer.json")
    export.export(d, tmp_path / "m.gguf", "gguf", tokenizer=path)
    meta, _, _ = read_gguf(tmp_path / "m.gguf")
    tok = json.loads(path.read_text())
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert meta["tokenizer.ggml.tokens"][500] == {i: t for t, i in tok["model"]["vocab"].items()}[500]
    assert meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]
    assert meta["tokenizer.ggml.merges"][:2] == [" ".join(m) if isinstance(m, list) else m
                                                  for m in tok["model"]["merges"][:2]]


# ---- Hugging Face -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("run", ["dense", "moe"])
def test_hf_round_trips_to_our_params(run, request, tmp_path):
    """config.json and model.safetensors read back into exactly the run's config and params."""
    d, cfg, params = request.getfixturevalue(run)
    out = tmp_path / "hf"
    assert export.main(["--format", "hf", str(d), str(out)]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"]
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == ["Ernie4_5_MoeForCausalLM" if cfg.use_moe else "LlamaForCausalLM"]
    assert hf["tie_word_embeddings"] and hf["rope_scaling"] is None
    back_cfg, sd = export.read_hf(out)
    inference = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("aux_loss_alpha", "seq_aux", "dropout")}
    assert inference(back_cfg) == inference(cfg)
    back = params_from_torch(sd, back_cfg)
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_yarn_becomes_rope_scaling(tmp_path):
    d, cfg, _ = make_run(tmp_path / "run", inference_rope_scaling=True)
    export.export(d, tmp_path / "hf", "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["rope_scaling"] == {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 2048,
                                  "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.0}
    assert export.read_hf(tmp_path / "hf")[0].inference_rope_scaling


def test_chat_template_is_ours():
    """The Jinja template shipped in tokenizer_config.json and the GGUF renders exactly like our Python one."""
    jinja2 = pytest.importorskip("jinja2", reason="rendering the template needs jinja2")
    template = jinja2.Environment().from_string(export.CHAT_TEMPLATE)
    conversations = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
        [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "<tool_call>x</tool_call>"},
         {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "20C"}, {"role": "user", "content": "ok"}],
    ]
    for messages in conversations:
        for gen in (False, True):
            assert template.render(messages=messages, add_generation_prompt=gen) == apply_chat_template(messages, gen)


def test_sentencepiece_becomes_an_equivalent_tokenizer_json():
    """The converted tokenizer.json encodes the sample corpus exactly like our SentencePiece tokenizer."""
    tokenizers = pytest.importorskip("tokenizers", reason="the hf export needs the tokenizers package")
    converted = tokenizers.Tokenizer.from_str(export.sp_to_hf_json(DEFAULT_TOKENIZER_DIR / "tokenizer.model"))
    ours = Tokenizer.load()
    sample = DEFAULT_TOKENIZER_DIR.parent
    texts = [json.loads(line)["text"] for line in (sample / "pretrain.jsonl").read_text().splitlines()[:300]]
    texts += [apply_chat_template(json.loads(line)["conversations"])
              for line in (sample / "sft.jsonl").read_text().splitlines()[:300]]
    texts += ["  two  spaces\tand a tab ", "digits 1234567 ünïcödé 🙂\n\n\nend", "<think>\nhm</think>\n<answer>",
              "<|im_start|>user\n你好<|im_end|>\n", "\x00\x7f control bytes"]
    for text in texts:
        ids = ours.encode(text)
        assert converted.encode(text, add_special_tokens=False).ids == ids, text[:80]
        assert converted.decode(ids, skip_special_tokens=False) == text


@pytest.fixture(scope="module")
def hf_libs():
    torch = pytest.importorskip("torch", reason="the transformers parity test needs torch (optional)")
    transformers = pytest.importorskip("transformers", reason="the parity test needs transformers (optional)")
    return torch, transformers


@pytest.mark.parametrize("run,overrides,length", [("dense", {}, 40), ("moe", {}, 40),
                                                   ("yarn", {"inference_rope_scaling": True}, 2100)])
def test_transformers_reproduces_our_logits(hf_libs, run, overrides, length, request, tmp_path):
    """from_pretrained on the export gives our logits to 1e-4 (dense Llama, MoE as Ernie 4.5, YaRN past the
    2048 positions where it starts to matter), padded batch included."""
    torch, transformers = hf_libs
    d, cfg, params = make_run(tmp_path / "run", **overrides) if run == "yarn" else request.getfixturevalue(run)
    export.export(d, tmp_path / "hf", "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = np.random.default_rng(2).integers(3, cfg.vocab_size, (2, length))
    mask = np.ones_like(ids)
    mask[1, :5] = 0                                            # left padding, as generation uses
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(MiniMindForCausalLM(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)).logits)
    real = mask.astype(bool)
    assert np.abs(theirs[real] - ours[real]).max() < 1e-4


def test_transformers_tokenizer_encodes_like_ours(hf_libs, dense, tmp_path, shared_path):
    """AutoTokenizer on the export encodes, decodes and templates like our Tokenizer, for both tokenizer kinds."""
    _, transformers = hf_libs
    d, _, _ = dense
    texts = ["Hello, 世界! 1234", "<think>\nmaybe</think>\n<answer>yes</answer>", "  spaced\tout\n\nlines 🙂"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"}]
    for source in (None, shared_path("minimind_tokenizer")):
        out = tmp_path / ("sp" if source is None else "bpe")
        export.export(d, out, "hf", tokenizer=source)
        theirs, ours = transformers.AutoTokenizer.from_pretrained(str(out)), Tokenizer.load(source)
        for text in texts:
            assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text
            assert theirs.encode(text) == ours.encode(text)                          # adds no bos/eos
            assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))
        assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
            ours.apply_chat_template(messages, add_generation_prompt=True)
        assert (theirs.eos_token_id, theirs.pad_token_id) == (2, 0)


# ---- refusals and whole-or-absent -------------------------------------------------------------------------------

def one_line_error(capsys, argv, *fragments):
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for f in fragments:
        assert f in err, err


def test_bad_run_dirs_are_one_line(tmp_path, dense, capsys):
    d, _, _ = dense
    out = tmp_path / "out.gguf"
    one_line_error(capsys, ["--format", "gguf", str(tmp_path / "nope"), str(out)], "no config.json")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((d / "config.json").read_text())
    (truncated / "weights.safetensors").write_bytes((d / "weights.safetensors").read_bytes()[:5000])
    one_line_error(capsys, ["--format", "hf", str(truncated), str(out)], "weights.safetensors",
                   "not a readable safetensors file")
    (truncated / "config.json").write_text(MiniMindConfig.from_preset("tiny", hidden_size=128).to_json())
    (truncated / "weights.safetensors").write_bytes((d / "weights.safetensors").read_bytes())
    one_line_error(capsys, ["--format", "hf", str(truncated), str(out)], "has shape")
    assert os.listdir(tmp_path) == ["truncated"]                                 # nothing written


def test_existing_out_needs_overwrite(dense, tmp_path, capsys):
    d, _, _ = dense
    out = tmp_path / "m.gguf"
    out.write_text("keep me")
    one_line_error(capsys, ["--format", "gguf", str(d), str(out)], "exists", "--overwrite")
    assert out.read_text() == "keep me"
    (tmp_path / "hf").mkdir()
    one_line_error(capsys, ["--format", "hf", str(d), str(tmp_path / "hf")], "exists")
    assert export.main(["--format", "gguf", str(d), str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert export.main(["--format", "hf", str(d), str(tmp_path / "hf"), "--overwrite"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert sorted(os.listdir(tmp_path)) == ["hf", "m.gguf"]                    # no temporaries left behind


def test_failed_write_leaves_nothing(dense, tmp_path, monkeypatch):
    d, _, _ = dense

    def half_then_fail(folder, *args):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_hf", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export.export(d, tmp_path / "hf", "hf")
    assert os.listdir(tmp_path) == []


def test_unexportable_models_are_refused(moe, tmp_path, capsys):
    d, _, _ = moe
    one_line_error(capsys, ["--format", "gguf", str(d), str(tmp_path / "m.gguf")], "MoE", "not supported")
    top1, _, _ = make_run(tmp_path / "top1", use_moe=True, num_experts_per_tok=1)
    one_line_error(capsys, ["--format", "hf", str(top1), str(tmp_path / "hf")], "matches no transformers")
    assert sorted(os.listdir(tmp_path)) == ["top1"]
