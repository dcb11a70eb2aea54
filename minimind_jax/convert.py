"""Weight interop with the reference: its tensor names and torch layouts <-> this model's params pytree.

    torch Linear weight (out, in)          <->  kernel (in, out)
    experts.{e}.{gate,up,down}_proj        <->  experts/{gate,up,down}_proj/kernel stacked [E, in, out]
    shared_experts.{s}.{gate,up}_proj      <->  shared_experts/{gate,up}_proj/kernel [H, S*I]  (concatenated widths)
    model.embed_tokens.weight, lm_head.weight  <->  model/embed_tokens [V, H]  (tied: saved under both names)

params_from_torch and params_to_torch are exact inverses. Files: .safetensors (fp16 like the reference's
checkpoints), and the reference's .pth when torch is installed.
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minimind_jax.config import MiniMindConfig

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_FFN = ("gate_proj", "up_proj", "down_proj")


def reference_shapes(cfg: MiniMindConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the reference's state_dict for `cfg`, with its torch shape."""
    H, V, I, HD = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * HD, cfg.num_key_value_heads * HD
    ffn = {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)}
        shapes |= {p + f"self_attn.{n}.weight": s for n, s in zip(_ATTN, ((q, H), (kv, H), (kv, H), (H, q)))}
        if not cfg.use_moe:
            shapes |= {p + f"mlp.{n}.weight": s for n, s in ffn.items()}
            continue
        shapes[p + "mlp.gate.weight"] = (cfg.n_routed_experts, H)
        for e in range(cfg.n_routed_experts):
            shapes |= {p + f"mlp.experts.{e}.{n}.weight": s for n, s in ffn.items()}
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
    if missing := [n for n in expected if n not in names]:
        raise ValueError(f"{source}: missing tensor {missing[0]} ({len(missing)} missing; is this checkpoint for "
                         f"another config?)")
    if unexpected := sorted(names - set(expected)):
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected; is this "
                         f"checkpoint for another config?)")
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
        from safetensors.numpy import load_file
        return load_file(str(path))
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
