"""Weight interop with the reference (both generations) and with Qwen3 in transformers: tensor names and torch
layouts <-> this model's params pytree.

    torch Linear weight (out, in)          <->  kernel (in, out)
    self_attn.{q,k}_norm (generation 3)    <->  self_attn/{q,k}_norm/weight [head_dim]
    experts.{e}.{gate,up,down}_proj        <->  experts/{gate,up,down}_proj/kernel stacked [E, in, out]
    shared_experts.{s}.{gate,up}_proj      <->  shared_experts/{gate,up}_proj/kernel [H, S*I]  (concatenated widths)
    model.embed_tokens.weight, lm_head.weight  <->  model/embed_tokens [V, H]  (tied: saved under both names)

params_from_torch and params_to_torch are exact inverses. `load_reference(state_dict, config)` takes a reference
checkpoint of either generation with its config dict and works out which generation it is. minimind-3 is Qwen3:
`to_qwen3` / `from_qwen3` give the `Qwen3ForCausalLM` (dense) or `Qwen3MoeForCausalLM` state dict and config.json.
Files: .safetensors (fp16 like the reference's checkpoints), and the reference's .pth when torch is installed.
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minimind_jax.config import MiniMindConfig, detect_generation

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_FFN = ("gate_proj", "up_proj", "down_proj")
_QK_NORM = ("q_norm", "k_norm")


def state_dict_generation(names) -> int:
    """3 if the tensors have QK-norm weights (every minimind-3 checkpoint does), else 2; a set with both QK-norm
    and shared-expert tensors (generation 2 only) is a one-line ValueError."""
    qk_norm = any(".self_attn.q_norm." in n or ".self_attn.k_norm." in n for n in names)
    if qk_norm and any(".mlp.shared_experts." in n for n in names):
        raise ValueError("state_dict mixes generation-3 tensors (self_attn.q_norm/k_norm) with generation-2 ones "
                         "(mlp.shared_experts)")
    return 3 if qk_norm else 2


def reference_shapes(cfg: MiniMindConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the reference's state_dict for `cfg`, with its torch shape."""
    H, V, HD = cfg.hidden_size, cfg.vocab_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * HD, cfg.num_key_value_heads * HD
    swiglu = lambda I: {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    ffn, expert = swiglu(cfg.intermediate_size), swiglu(cfg.moe_intermediate_size)
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)}
        shapes |= {p + f"self_attn.{n}.weight": s for n, s in zip(_ATTN, ((q, H), (kv, H), (kv, H), (H, q)))}
        if cfg.qk_norm:
            shapes |= {p + f"self_attn.{n}.weight": (HD,) for n in _QK_NORM}
        if not cfg.use_moe:
            shapes |= {p + f"mlp.{n}.weight": s for n, s in ffn.items()}
            continue
        shapes[p + "mlp.gate.weight"] = (cfg.n_routed_experts, H)
        for e in range(cfg.n_routed_experts):
            shapes |= {p + f"mlp.experts.{e}.{n}.weight": s for n, s in expert.items()}
        for s_ in range(cfg.n_shared_experts):
            shapes |= {p + f"mlp.shared_experts.{s_}.{n}.weight": s for n, s in ffn.items()}
    return shapes


def check_state_dict(state_dict: dict, cfg: MiniMindConfig, source: str = "state_dict") -> None:
    """One-line ValueError naming the first missing, unexpected or misshaped tensor."""
    expected = reference_shapes(cfg)
    names = set(state_dict)
    if "model.embed_tokens.weight" not in names and "lm_head.weight" in names:
        names.add("model.embed_tokens.weight")          # tied: either name is enough
    names.add("lm_head.weight")
    found = state_dict_generation(names)
    other = (f"a generation-{found} checkpoint for a generation-{cfg.generation} config?" if found != cfg.generation
             else "is this checkpoint for another config?")
    if missing := [n for n in expected if n not in names]:
        raise ValueError(f"{source}: missing tensor {missing[0]} ({len(missing)} missing; {other})")
    if unexpected := sorted(names - set(expected)):
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected; {other})")
    for name, shape in expected.items():                          # in the reference's order: embedding first
        if name in state_dict and tuple(np.shape(state_dict[name])) != shape:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(np.shape(state_dict[name]))} but the config "
                             f"expects {shape} (hidden_size={cfg.hidden_size}, vocab_size={cfg.vocab_size})")


def params_from_torch(state_dict: dict, cfg: MiniMindConfig, source: str = "state_dict") -> dict:
    """{reference name: array (torch layout)} -> params {'model': ...} (arrays keep their dtype)."""
    check_state_dict(state_dict, cfg, source)
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    embed = sd.get("model.embed_tokens.weight", sd.get("lm_head.weight"))
    if "lm_head.weight" in sd and not np.array_equal(sd["lm_head.weight"], embed):
        raise ValueError(f"{source}: lm_head.weight differs from model.embed_tokens.weight, but MiniMind ties them")
    kernel = lambda name: {"kernel": sd[name].T}
    stack = lambda names: np.stack([sd[n].T for n in names])
    model = {"embed_tokens": embed, "norm": {"weight": sd["model.norm.weight"]}}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        layer = {"input_layernorm": {"weight": sd[p + "input_layernorm.weight"]},
                 "post_attention_layernorm": {"weight": sd[p + "post_attention_layernorm.weight"]},
                 "self_attn": {n: kernel(p + f"self_attn.{n}.weight") for n in _ATTN}}
        if cfg.qk_norm:
            layer["self_attn"] |= {n: {"weight": sd[p + f"self_attn.{n}.weight"]} for n in _QK_NORM}
        if not cfg.use_moe:
            layer["mlp"] = {n: kernel(p + f"mlp.{n}.weight") for n in _FFN}
        else:
            E, S = cfg.n_routed_experts, cfg.n_shared_experts
            mlp = {"gate": kernel(p + "mlp.gate.weight"),
                   "experts": {n: {"kernel": stack([p + f"mlp.experts.{e}.{n}.weight" for e in range(E)])}
                               for n in _FFN}}
            if S:
                shared = lambda n: [sd[p + f"mlp.shared_experts.{s}.{n}.weight"].T for s in range(S)]
                mlp["shared_experts"] = {"gate_proj": {"kernel": np.concatenate(shared("gate_proj"), axis=1)},
                                         "up_proj": {"kernel": np.concatenate(shared("up_proj"), axis=1)},
                                         "down_proj": {"kernel": np.concatenate(shared("down_proj"), axis=0)}}
            layer["mlp"] = mlp
        model[f"layers_{i}"] = layer
    return {"model": model}


def params_to_torch(params: dict, cfg: MiniMindConfig) -> dict[str, np.ndarray]:
    """params {'model': ...} -> {reference name: contiguous np array (torch layout)}; the exact inverse."""
    m = jax.tree.map(np.asarray, jax.device_get(params["model"]))
    t = lambda a: np.ascontiguousarray(a.T)
    sd = {"model.embed_tokens.weight": np.ascontiguousarray(m["embed_tokens"])}
    for i in range(cfg.num_hidden_layers):
        p, layer = f"model.layers.{i}.", m[f"layers_{i}"]
        sd[p + "input_layernorm.weight"] = layer["input_layernorm"]["weight"]
        sd[p + "post_attention_layernorm.weight"] = layer["post_attention_layernorm"]["weight"]
        sd |= {p + f"self_attn.{n}.weight": t(layer["self_attn"][n]["kernel"]) for n in _ATTN}
        if cfg.qk_norm:
            sd |= {p + f"self_attn.{n}.weight": layer["self_attn"][n]["weight"] for n in _QK_NORM}
        mlp = layer["mlp"]
        if not cfg.use_moe:
            sd |= {p + f"mlp.{n}.weight": t(mlp[n]["kernel"]) for n in _FFN}
            continue
        sd[p + "mlp.gate.weight"] = t(mlp["gate"]["kernel"])
        for n in _FFN:
            sd |= {p + f"mlp.experts.{e}.{n}.weight": t(w) for e, w in enumerate(mlp["experts"][n]["kernel"])}
        S = cfg.n_shared_experts
        for n in _FFN if S else ():
            axis = 0 if n == "down_proj" else 1          # the concatenated width: down's input, gate/up's output
            for s, w in enumerate(np.split(mlp["shared_experts"][n]["kernel"], S, axis=axis)):
                sd[p + f"mlp.shared_experts.{s}.{n}.weight"] = t(w)
    sd["model.norm.weight"] = m["norm"]["weight"]
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]     # tied, stored under both names like the reference
    return sd


def save_weights(path, params: dict, cfg: MiniMindConfig, dtype=np.float16) -> None:
    """Write params under the reference's names to a .safetensors file (fp16 by default, like the reference)."""
    from safetensors.numpy import save_file
    sd = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params_to_torch(params, cfg).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


def read_state_dict(path) -> dict[str, np.ndarray]:
    """{name: array} from a .safetensors file, or a reference .pth / .pt / .bin (needs torch)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return load_file(str(path))
        except SafetensorError as e:            # cut short, or not a safetensors file at all
            raise ValueError(f"{path}: not a whole safetensors file ({str(e).strip()})") from None
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise ValueError(f"{path}: unknown weights format (expected .safetensors or a torch .pth)")
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path}: reading a .pth needs torch: pip install 'minimind-jax[torch]'") from None
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):       # a reference resume file
        obj = obj["model"]
    return {k: v.detach().float().numpy() for k, v in obj.items()}


def load_weights(path, cfg: MiniMindConfig, dtype=jnp.float32) -> dict:
    """params (float32 by default) from a .safetensors or reference .pth file; one-line errors name the file
    and the offending tensor."""
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in read_state_dict(path).items()}
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params_from_torch(sd, cfg, source=str(path)))


# ---- either generation's checkpoint with its config ------------------------------------------------------------

def load_reference(state_dict: dict, config: dict, source: str = "state_dict") -> tuple[MiniMindConfig, dict]:
    """(cfg, params) from a reference checkpoint {name: array (torch layout)} of either generation and its
    MiniMindConfig fields as a dict.

    The generation comes from the tensor names (QK-norm weights: 3) and must agree with the config's keys when
    they show one. Every tensor must fit the config exactly: a checkpoint of the other generation is a one-line
    ValueError, never a partial load.
    """
    found, declared = state_dict_generation(state_dict), detect_generation(config)
    if declared not in (None, found):
        raise ValueError(f"{source}: the config is for generation {declared} but the tensors are generation {found} "
                         f"({'with' if found == 3 else 'without'} self_attn.q_norm/k_norm)")
    cfg = MiniMindConfig.from_dict({**config, "generation": found})
    return cfg, params_from_torch(state_dict, cfg, source)


def reference_config(cfg: MiniMindConfig) -> dict:
    """The reference MiniMindConfig's fields for cfg, under its generation's names (what load_reference reads)."""
    if cfg.generation == 2:
        return cfg.to_dict()
    return dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                head_dim=cfg.head_dim, vocab_size=cfg.vocab_size, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
                rope_theta=cfg.rope_theta, tie_word_embeddings=True, inference_rope_scaling=cfg.inference_rope_scaling,
                rope_scaling=dict(YARN, type="yarn") if cfg.inference_rope_scaling else None, use_moe=cfg.use_moe,
                num_experts=cfg.n_routed_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                moe_intermediate_size=cfg.moe_intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
                router_aux_loss_coef=cfg.aux_loss_alpha, dropout=cfg.dropout, bos_token_id=cfg.bos_token_id,
                eos_token_id=cfg.eos_token_id, hidden_act=cfg.hidden_act)


# ---- Qwen3 in transformers (minimind-3's export target) ----------------------------------------------------------

# MiniMind's fixed YaRN parameters (model.rope_frequencies).
YARN = dict(beta_fast=32, beta_slow=1, factor=16, original_max_position_embeddings=2048, attention_factor=1.0)
_QWEN3_SHARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                 "rope_theta", "bos_token_id", "eos_token_id")
_QWEN3_MOE = dict(num_experts="n_routed_experts", num_experts_per_tok="num_experts_per_tok",
                  moe_intermediate_size="moe_intermediate_size", norm_topk_prob="norm_topk_prob",
                  router_aux_loss_coef="aux_loss_alpha")


def qwen3_config(cfg: MiniMindConfig) -> dict:
    """The transformers config.json of `Qwen3ForCausalLM` (dense) or `Qwen3MoeForCausalLM` (MoE) for a
    minimind-3 config."""
    if cfg.generation != 3 or not cfg.qk_norm or cfg.n_shared_experts:
        raise ValueError("qwen3_config: only a generation-3 config (QK-norm, no shared experts) is a Qwen3 model")
    # YaRN is on only past the original 2048 positions (model.rope_frequencies); transformers always applies it.
    yarn = cfg.inference_rope_scaling and cfg.max_position_embeddings > YARN["original_max_position_embeddings"]
    hf = {k: getattr(cfg, k) for k in _QWEN3_SHARED} | dict(
        architectures=["Qwen3MoeForCausalLM" if cfg.use_moe else "Qwen3ForCausalLM"],
        model_type="qwen3_moe" if cfg.use_moe else "qwen3", tie_word_embeddings=True, attention_bias=False,
        attention_dropout=cfg.dropout, rope_scaling=dict(YARN, rope_type="yarn") if yarn else None,
        use_sliding_window=False, torch_dtype="float32")
    if cfg.use_moe:
        hf |= {k: getattr(cfg, ours) for k, ours in _QWEN3_MOE.items()} | dict(decoder_sparse_step=1, mlp_only_layers=[])
    return hf


def to_qwen3(params: dict, cfg: MiniMindConfig) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict, config.json dict) that transformers' Qwen3 classes load strictly: minimind-3 already uses
    Qwen3's tensor names and layouts."""
    return params_to_torch(params, cfg), qwen3_config(cfg)


def from_qwen3(state_dict: dict, hf_config: dict, source: str = "state_dict") -> tuple[MiniMindConfig, dict]:
    """(cfg, params) from a `Qwen3ForCausalLM` / `Qwen3MoeForCausalLM` state dict and config.json; the exact
    inverse of to_qwen3. Qwen3 features MiniMind lacks (untied or biased projections, sliding windows, dense
    layers inside an MoE, other RoPE scalings) are one-line ValueErrors."""
    model_type = hf_config.get("model_type")
    if model_type not in ("qwen3", "qwen3_moe"):
        raise ValueError(f"{source}: model_type {model_type!r} is not Qwen3 (expected 'qwen3' or 'qwen3_moe')")
    moe = model_type == "qwen3_moe"
    unsupported = [k for k, ok in (("tie_word_embeddings", hf_config.get("tie_word_embeddings", True)),
                                   ("attention_bias", not hf_config.get("attention_bias", False)),
                                   ("use_sliding_window", not hf_config.get("use_sliding_window", False)),
                                   ("mlp_only_layers", not hf_config.get("mlp_only_layers")),
                                   ("decoder_sparse_step", hf_config.get("decoder_sparse_step", 1) == 1)) if not ok]
    if unsupported:
        raise ValueError(f"{source}: Qwen3 setting {unsupported[0]}={hf_config[unsupported[0]]!r} has no MiniMind "
                         f"equivalent")
    rope = hf_config.get("rope_scaling")
    if rope is not None and {k: v for k, v in rope.items() if k not in ("rope_type", "type")} != YARN:
        raise ValueError(f"{source}: rope_scaling {rope} is not MiniMind's YaRN {YARN}")
    fields = {k: hf_config[k] for k in _QWEN3_SHARED if k in hf_config}
    if moe:
        fields |= {ours: hf_config[k] for k, ours in _QWEN3_MOE.items() if k in hf_config}
    cfg = MiniMindConfig(generation=3, use_moe=moe, inference_rope_scaling=rope is not None,
                         dropout=hf_config.get("attention_dropout", 0.0), **fields)
    return cfg, params_from_torch(state_dict, cfg, source)


def save_qwen3(directory, params: dict, cfg: MiniMindConfig, dtype=np.float32) -> None:
    """A transformers model directory (config.json + model.safetensors) that `Qwen3ForCausalLM.from_pretrained`
    (or the MoE class) loads. Experts stay one tensor per expert, the layout of Qwen3 checkpoints, which newer
    transformers fuses on load; the tied lm_head is left to transformers, as its save_pretrained does."""
    from safetensors.numpy import save_file
    sd, hf = to_qwen3(params, cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=dtype) for k, v in sd.items() if k != "lm_head.weight"},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({**hf, "torch_dtype": np.dtype(dtype).name}, indent=1))


def load_qwen3(directory, dtype=jnp.float32) -> tuple[MiniMindConfig, dict]:
    """(cfg, params) from a directory save_qwen3 wrote (one model.safetensors)."""
    directory = Path(directory)
    hf = json.loads((directory / "config.json").read_text())
    sd = {k: np.asarray(v, np.float32) for k, v in read_state_dict(directory / "model.safetensors").items()}
    cfg, params = from_qwen3(sd, hf, source=str(directory))
    return cfg, jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
