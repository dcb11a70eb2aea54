"""Export a trained run for the tools around it: a Hugging Face folder (transformers) or a GGUF file (llama.cpp).

    python -m minimind_jax.export --format hf   out/full_sft_512 exported/minimind2-small
    python -m minimind_jax.export --format gguf out/full_sft_512 exported/minimind2-small.gguf --outtype f16

RUN_DIR is a trainer run directory (`weights.safetensors` + `config.json`). The tokenizer is `--tokenizer`, else the
run directory's own when it holds one, else the embedded one. The output appears whole or not at all: it is written
under a temporary name beside OUT and renamed when complete; an existing OUT is refused unless `--overwrite`.

Layouts (chosen in `hf_layout`, the one place to add another):

    dense MiniMind  ->  LlamaForCausalLM: the reference's tensor names are Llama's; rotate-half RoPE, tied embedding
    MoE MiniMind    ->  Ernie4_5_MoeForCausalLM: softmax router, renormalised top-k, unweighted shared experts like
                        MiniMind's; Ernie rotates interleaved pairs, so q/k rows are permuted to match (below)

A MiniMind that no transformers architecture computes exactly (an MoE with top-1 or without renormalisation) is
refused rather than exported approximately. GGUF uses llama.cpp's `llama` architecture, dense models only.
"""
import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from minimind_jax.config import MiniMindConfig
from minimind_jax.convert import check_state_dict, read_state_dict
from minimind_jax.tokenizer import DEFAULT_SYSTEM_PROMPT, DEFAULT_TOKENIZER_DIR, HF_JSON, SP_MODEL, SPECIAL_TOKENS

OUTTYPES = ("f32", "f16", "bf16")


class ExportError(ValueError):
    """A user error (bad run directory, unsupported model, existing output): one line on stderr, exit 2."""


# ---- the run ----------------------------------------------------------------------------------------------------

def _files(folder: Path, *names: str, expected: str) -> list[Path]:
    """The named files of `folder`; ExportError naming the first missing one and what the folder should be."""
    paths = [folder / n for n in names]
    for f in paths:
        if not f.is_file():
            raise ExportError(f"{folder}: no {f.name} (expected {expected})")
    return paths


def _checked(sd: dict, cfg: MiniMindConfig, weights: Path) -> dict:
    """`sd` once its names and shapes fit `cfg`; ExportError naming the tensor otherwise."""
    try:
        check_state_dict(sd, cfg, str(weights))
    except ValueError as e:
        raise ExportError(str(e)) from None
    return sd


def read_run(run_dir) -> tuple[MiniMindConfig, dict[str, np.ndarray]]:
    """(config, {reference name: float32 array}) of a run directory; ExportError naming the file at fault."""
    run_dir = Path(run_dir)
    config, weights = _files(run_dir, "config.json", "weights.safetensors",
                             expected="a run directory written by python -m train.run")
    try:
        cfg = MiniMindConfig.from_json(config.read_text())
    except (ValueError, TypeError) as e:
        raise ExportError(f"{config}: not a MiniMindConfig ({e})") from None
    sd = _checked(read_safetensors(weights), cfg, weights)
    sd.setdefault("model.embed_tokens.weight", sd.get("lm_head.weight"))
    sd.pop("lm_head.weight", None)          # tied: the embedding is the one copy every layout starts from
    return cfg, sd


def read_safetensors(path) -> dict[str, np.ndarray]:
    """{name: float32 array}; a truncated or foreign file is an ExportError."""
    try:
        return {k: np.asarray(v, np.float32) for k, v in read_state_dict(path).items()}
    except Exception as e:               # safetensors raises its own error types with multi-line text
        raise ExportError(f"{path}: not a readable safetensors file ({str(e).strip().splitlines()[-1]})") from None


def run_tokenizer(run_dir, tokenizer=None) -> Path:
    """The tokenizer file to ship: `tokenizer` when given, else the run directory's own, else the embedded one."""
    def find(d: Path) -> Path | None:
        if d.is_file():
            return d
        return next((d / n for n in (SP_MODEL, HF_JSON) if (d / n).is_file()), None)
    if tokenizer is not None:
        if (found := find(Path(tokenizer))) is None:
            raise ExportError(f"--tokenizer {tokenizer}: no {SP_MODEL} or {HF_JSON} there")
        return found
    return find(Path(run_dir)) or find(DEFAULT_TOKENIZER_DIR)


# ---- RoPE -------------------------------------------------------------------------------------------------------

def yarn_parameters(cfg: MiniMindConfig) -> dict | None:
    """The standard YaRN parameters that reproduce MiniMind's, or None when MiniMind runs plain RoPE.

    MiniMind scales only when max_position_embeddings exceeds the 2048 original positions, and clamps the ramp's
    upper end at head_dim/2 - 1 where transformers and llama.cpp clamp at head_dim - 1: the two agree unless that
    clamp is reached, which no MiniMind config reaches (refused if one does).
    """
    orig, factor, beta_fast, beta_slow = 2048, 16.0, 32.0, 1.0
    if not cfg.inference_rope_scaling or cfg.max_position_embeddings <= orig:
        return None
    d = cfg.head_dim
    high = math.ceil(d * math.log(orig / (beta_slow * 2 * math.pi)) / (2 * math.log(cfg.rope_theta)))
    if high > d // 2 - 1:
        raise ExportError(f"YaRN with head_dim {d} and rope_theta {cfg.rope_theta:g} clamps its ramp where "
                          f"transformers and llama.cpp do not: no exact export")
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": orig,
            "beta_fast": beta_fast, "beta_slow": beta_slow, "attention_factor": 1.0}


def interleave_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """q/k projection rows from rotate-half order to interleaved pairs, per head.

    Rotate-half rotates element i of a head with element i + head_dim/2; interleaved RoPE (llama.cpp's `llama`,
    Ernie) rotates 2i with 2i + 1 at the same frequency. Moving row i + half*head_dim/2 to row 2i + half makes the
    interleaved rotation of the permuted q and k exactly the rotate-half rotation of the original ones, and q.k is
    unchanged because both sides are permuted alike. llama.cpp's own converter does the same for HF Llama.
    """
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def halve_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of interleave_rope_rows."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---- Hugging Face layouts ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HFLayout:
    """How one transformers architecture holds a MiniMind: its config fields and its tensors, both ways."""
    architecture: str
    model_type: str
    config: Callable[[MiniMindConfig], dict]                  # MiniMind config -> the architecture's own fields
    to_hf: Callable[[dict, MiniMindConfig], dict]             # reference state dict -> HF state dict
    from_hf: Callable[[dict, MiniMindConfig], dict]           # and back
    minimind_fields: Callable[[dict], dict]                   # HF config -> MiniMindConfig fields beyond the common


def hf_layout(cfg: MiniMindConfig) -> HFLayout:
    """The transformers architecture that computes exactly what MiniMind computes for `cfg`."""
    if not cfg.use_moe:
        return LLAMA
    if cfg.num_experts_per_tok > 1 and cfg.norm_topk_prob:
        return ERNIE_MOE
    raise ExportError("this MoE (top-1 or unnormalised top-k routing) matches no transformers architecture exactly "
                      "(Ernie 4.5 always renormalises; Qwen2-MoE gates its shared expert; Mixtral has none): "
                      "not exported")


def layout_named(architecture: str, source: str) -> HFLayout:
    for layout in (LLAMA, ERNIE_MOE):
        if layout.architecture == architecture:
            return layout
    raise ExportError(f"{source}: architecture {architecture!r} is not one this project exports")


def common_config(cfg: MiniMindConfig) -> dict:
    """The fields every layout shares (transformers names)."""
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "hidden_act": cfg.hidden_act,
            "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "rope_scaling": yarn_parameters(cfg), "tie_word_embeddings": True,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": 0,
            "initializer_range": 0.02, "use_cache": True}


def common_fields(hf: dict) -> dict:
    """MiniMindConfig fields from the shared transformers fields."""
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act", "bos_token_id",
             "eos_token_id")
    fields = {n: hf[n] for n in names}
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    fields["rope_theta"] = hf.get("rope_theta", rope.get("rope_theta"))
    fields["inference_rope_scaling"] = rope.get("rope_type", rope.get("type")) == "yarn"
    return fields


LLAMA = HFLayout(
    architecture="LlamaForCausalLM", model_type="llama",
    config=lambda cfg: {"attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "pretraining_tp": 1},
    to_hf=lambda sd, cfg: dict(sd),                 # MiniMind kept Llama's names and layouts
    from_hf=lambda sd, cfg: dict(sd),
    minimind_fields=lambda hf: {"use_moe": False})


def ernie_config(cfg: MiniMindConfig) -> dict:
    L = cfg.num_hidden_layers
    return {"use_bias": False, "moe_intermediate_size": cfg.intermediate_size, "moe_k": cfg.num_experts_per_tok,
            "moe_num_experts": cfg.n_routed_experts, "moe_num_shared_experts": cfg.n_shared_experts,
            "moe_layer_start_index": 0, "moe_layer_end_index": L - 1, "moe_layer_interval": 1,
            "moe_norm_min": 1e-12, "router_aux_loss_coef": cfg.aux_loss_alpha, "output_router_logits": False}


def ernie_to_hf(sd: dict, cfg: MiniMindConfig) -> dict:
    """q/k rows interleaved for Ernie's RoPE; the S shared experts as one SwiGLU of width S*I (their outputs are
    summed unweighted, so concatenating the widths is the same function); a zero router bias (Ernie adds it to the
    scores only to choose experts)."""
    out, S = {}, cfg.n_shared_experts
    for name, w in sd.items():
        if ".mlp.shared_experts." in name:
            continue
        if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            w = interleave_rope_rows(w, heads)
        out[name] = w
    for i in range(cfg.num_hidden_layers if S else 0):
        p = f"model.layers.{i}.mlp."
        shared = lambda n: [sd[p + f"shared_experts.{s}.{n}.weight"] for s in range(S)]
        out[p + "shared_experts.gate_proj.weight"] = np.concatenate(shared("gate_proj"), axis=0)
        out[p + "shared_experts.up_proj.weight"] = np.concatenate(shared("up_proj"), axis=0)
        out[p + "shared_experts.down_proj.weight"] = np.concatenate(shared("down_proj"), axis=1)
    for i in range(cfg.num_hidden_layers):
        out[f"model.layers.{i}.mlp.moe_statics.e_score_correction_bias"] = np.zeros((1, cfg.n_routed_experts),
                                                                                  np.float32)
    return out


def ernie_from_hf(sd: dict, cfg: MiniMindConfig) -> dict:
    out, S = {}, cfg.n_shared_experts
    for name, w in sd.items():
        if name.endswith("moe_statics.e_score_correction_bias"):
            if np.any(w != 0):
                raise ExportError(f"{name} is not zero: MiniMind's router has no expert bias")
            continue
        if ".mlp.shared_experts." in name:
            p, n = name.split("shared_experts.")
            n = n.split(".")[0]
            for s, part in enumerate(np.split(w, S, axis=1 if n == "down_proj" else 0)):
                out[f"{p}shared_experts.{s}.{n}.weight"] = part
            continue
        if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            w = halve_rope_rows(w, heads)
        out[name] = w
    return out


ERNIE_MOE = HFLayout(
    architecture="Ernie4_5_MoeForCausalLM", model_type="ernie4_5_moe", config=ernie_config,
    to_hf=ernie_to_hf, from_hf=ernie_from_hf,
    minimind_fields=lambda hf: {"use_moe": True, "num_experts_per_tok": hf["moe_k"],
                                "n_routed_experts": hf["moe_num_experts"],
                                "n_shared_experts": hf["moe_num_shared_experts"], "norm_topk_prob": True,
                                "intermediate_size": hf["moe_intermediate_size"]})


def hf_config(cfg: MiniMindConfig, dtype: str) -> dict:
    layout = hf_layout(cfg)
    return {"architectures": [layout.architecture], "model_type": layout.model_type, **common_config(cfg),
            **layout.config(cfg), "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]}


def read_hf(folder) -> tuple[MiniMindConfig, dict[str, np.ndarray]]:
    """(config, {reference name: float32 array}) of a folder this module exported: the inverse of the hf export."""
    folder = Path(folder)
    config, weights = _files(folder, "config.json", "model.safetensors", expected="a Hugging Face model folder")
    hf = json.loads(config.read_text())
    layout = layout_named((hf.get("architectures") or [None])[0], str(config))
    try:
        cfg = MiniMindConfig(**{**common_fields(hf), **layout.minimind_fields(hf)})
    except KeyError as e:
        raise ExportError(f"{config}: no {e.args[0]} field") from None
    except ValueError as e:
        raise ExportError(f"{config}: {e}") from None
    sd = _checked(layout.from_hf(read_safetensors(weights), cfg), cfg, weights)
    return cfg, sd


# ---- tokenizer files --------------------------------------------------------------------------------------------

# The Jinja form of tokenizer.apply_chat_template (ChatML, the default system prompt when the first message is not
# a system one, consecutive tool results in one user turn), for transformers' and llama.cpp's chat templating.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- set content = m['content'] if m['content'] is string else '' -%}"
    "{%- if m['role'] == 'tool' -%}"
    "{%- if loop.first or turns[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' -}}"
    "{%- if loop.last or turns[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

# SentencePiece piece types (sentencepiece_model.proto), which GGUF's token types number the same way.
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6


def sp_pieces(path) -> list:
    """The pieces (piece, score, type) of a SentencePiece model file."""
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ExportError(f"{path}: only SentencePiece BPE models can be exported")
    return list(proto.pieces)


def sp_merges(pieces) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's BPE, which repeatedly joins the adjacent pair whose concatenation is
    the highest-scoring piece: every split of a piece into two mergeable pieces, ranked by the whole piece's score.
    Control, user-defined and byte pieces never merge."""
    ids = {p.piece: i for i, p in enumerate(pieces) if p.type == SP_NORMAL}
    ranked = []
    for i, p in enumerate(pieces):
        if p.type != SP_NORMAL:
            continue
        for k in range(1, len(p.piece)):
            left, right = p.piece[:k], p.piece[k:]
            if left in ids and right in ids:
                ranked.append((-p.score, i, ids[left], ids[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def sp_to_hf_json(path) -> str:
    """A `tokenizers` tokenizer.json that encodes like this project's SentencePiece model: the same BPE, byte
    fallback, spaces as '▁' (no dummy prefix), the special and tag tokens matched whole anywhere in the text.

    One difference remains: a literal '▁' in the text encodes as a space would (our Tokenizer routes it around the
    model as bytes; a tokenizer.json cannot tell the two apart).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    pieces = sp_pieces(path)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.BPE(vocab, sp_merges(pieces), unk_token=SPECIAL_TOKENS[0], byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=p.type != SP_USER_DEFINED) for p in pieces
                    if p.type in (SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED)])
    return tok.to_str(pretty=True)


def hf_tokenizer_json(path) -> str:
    path = Path(path)
    return path.read_text(encoding="utf-8") if path.suffix == ".json" else sp_to_hf_json(path)


def tokenizer_config(cfg: MiniMindConfig) -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_TOKENS[1],
            "eos_token": SPECIAL_TOKENS[2], "pad_token": SPECIAL_TOKENS[0], "unk_token": SPECIAL_TOKENS[0],
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": cfg.max_position_embeddings, "chat_template": CHAT_TEMPLATE}


def generation_config(cfg: MiniMindConfig) -> dict:
    """The chat CLI's sampling defaults (the reference's)."""
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": 0,
            "do_sample": True, "temperature": 0.85, "top_p": 0.85}


# ---- writers ----------------------------------------------------------------------------------------------------

def cast(a: np.ndarray, outtype: str) -> np.ndarray:
    import ml_dtypes
    return np.ascontiguousarray(a, {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}[outtype])


def write_hf(folder: Path, cfg: MiniMindConfig, sd: dict, tokenizer: Path, outtype: str) -> None:
    from safetensors.numpy import save
    layout = hf_layout(cfg)
    hf_sd = {k: (v if k.endswith("e_score_correction_bias") else cast(v, outtype))
             for k, v in layout.to_hf(sd, cfg).items()}
    # Written as bytes, so the file gets the user's usual permissions (save_file creates it private).
    (folder / "model.safetensors").write_bytes(save(hf_sd, metadata={"format": "pt"}))
    dump = lambda name, obj: (folder / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    dump("config.json", hf_config(cfg, outtype))
    dump("generation_config.json", generation_config(cfg))
    dump("tokenizer_config.json", tokenizer_config(cfg))
    (folder / HF_JSON).write_text(hf_tokenizer_json(tokenizer), encoding="utf-8")


# GGUF tensor names (llama.cpp's `llama` architecture) for the reference's per-layer names.
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight"}


def gguf_tensors(sd: dict, cfg: MiniMindConfig) -> dict[str, np.ndarray]:
    """llama.cpp names and layouts (the tied output matrix is left out: llama.cpp reuses token_embd)."""
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    for i in range(cfg.num_hidden_layers):
        for ref, name in GGUF_LAYER_NAMES.items():
            w = sd[f"model.layers.{i}.{ref}"]
            if ref.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                w = interleave_rope_rows(w, cfg.num_attention_heads if "q_proj" in ref else cfg.num_key_value_heads)
            out[f"blk.{i}.{name}"] = w
    return out


def gguf_vocab(writer, path: Path, vocab_size: int) -> None:
    """Tokens, types (and SentencePiece scores, or BPE merges) padded with unused tokens to the model's vocab."""
    import gguf
    if path.suffix == ".json":
        tok = json.loads(path.read_text(encoding="utf-8"))
        if tok["model"]["type"] != "BPE" or (tok.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
            raise ExportError(f"{path}: only byte-level BPE tokenizer.json files can be written to GGUF")
        by_id = {i: t for t, i in tok["model"]["vocab"].items()}
        special = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
        by_id |= {a["id"]: a["content"] for a in tok.get("added_tokens", [])}
        tokens = [by_id[i] for i in range(len(by_id))]
        types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
        merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
        model, pre, scores = "gpt2", "gpt-2", None            # the GPT-2 split regex MiniMind's ByteLevel uses
    else:
        pieces = sp_pieces(path)
        tokens, scores, types = [p.piece for p in pieces], [p.score for p in pieces], [p.type for p in pieces]
        model, pre, merges = "llama", "default", None
    if len(tokens) > vocab_size:
        raise ExportError(f"{path}: {len(tokens)} tokens but the model's vocab_size is {vocab_size}")
    pad = vocab_size - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types += [gguf.TokenType.UNUSED] * pad
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores + [0.0] * pad)
        writer.add_add_space_prefix(False)                # trained without a dummy prefix
    if merges is not None:
        writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def write_gguf(path: Path, cfg: MiniMindConfig, sd: dict, tokenizer: Path, outtype: str, name: str) -> None:
    import gguf
    if cfg.use_moe:
        raise ExportError("GGUF export of an MoE MiniMind is not supported (llama.cpp's llama architecture has no "
                          "shared expert): export --format hf instead")
    yarn = yarn_parameters(cfg)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if yarn:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(yarn["factor"])
        writer.add_rope_scaling_orig_ctx_len(yarn["original_max_position_embeddings"])
        writer.add_rope_scaling_yarn_beta_fast(yarn["beta_fast"])
        writer.add_rope_scaling_yarn_beta_slow(yarn["beta_slow"])
        # llama.cpp multiplies cos/sin by 1 + 0.1 ln(factor) on top of this factor; MiniMind's total is 1.
        writer.add_rope_scaling_yarn_attn_factor(1.0 / (1.0 + 0.1 * math.log(yarn["factor"])))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype])
    gguf_vocab(writer, tokenizer, cfg.vocab_size)
    for tensor_name, w in gguf_tensors(sd, cfg).items():
        kind = "f32" if w.ndim == 1 else outtype                 # norms stay f32, as llama.cpp's converter keeps them
        if kind == "bf16":
            writer.add_tensor(tensor_name, gguf.quants.quantize(w, gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(tensor_name, cast(w, kind))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---- whole or absent --------------------------------------------------------------------------------------------

def publish(out: Path, write: Callable[[Path], None], is_dir: bool, overwrite: bool) -> None:
    """Run write(tmp) on a temporary path beside `out`, then rename it to `out`; nothing is left on failure."""
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    if is_dir:
        tmp.mkdir()
    old = out.parent / f".{out.name}.{os.getpid()}.old"
    try:
        write(tmp)
        if out.exists():                                  # --overwrite: move the old one aside, then drop it
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()


def export(run_dir, out, fmt: str, outtype: str = "f16", tokenizer=None, overwrite: bool = False) -> Path:
    cfg, sd = read_run(run_dir)
    tok = run_tokenizer(run_dir, tokenizer)
    out = Path(out)
    if fmt == "hf":
        hf_layout(cfg)                                   # refuse before writing anything
        publish(out, lambda tmp: write_hf(tmp, cfg, sd, tok, outtype), is_dir=True, overwrite=overwrite)
    else:
        publish(out, lambda tmp: write_gguf(tmp, cfg, sd, tok, outtype, Path(run_dir).resolve().name),
                is_dir=False, overwrite=overwrite)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimind_jax.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=["hf", "gguf"])
    p.add_argument("run_dir", help="a run directory: weights.safetensors + config.json")
    p.add_argument("out", help="the folder (hf) or .gguf file to write")
    p.add_argument("--outtype", default="f16", choices=OUTTYPES, help="weight dtype (default f16, like the run's)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or file, when the run directory holds none")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        out = export(args.run_dir, args.out, args.format, args.outtype, args.tokenizer, args.overwrite)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
