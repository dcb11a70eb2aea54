"""LoRA as the reference does it: a rank-r adapter on every Linear whose weight is square (q_proj and o_proj in
MiniMind), A ~ N(0, 0.02), B = 0, so training starts from the base model exactly:

    y = x W + (x A) B          A [in, r], B [r, out]   (torch: lora.A.weight (r, in), lora.B.weight (out, r))

The adapters are their own small pytree mirroring the params tree. `apply_lora` folds them into the kernels,
W + A B, which is the same function; differentiate the loss with respect to the adapters alone and the base
weights get no gradient, no optimizer state and no checkpoint space.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from minimind_jax.config import MiniMindConfig


def lora_targets(params) -> dict[tuple[str, ...], tuple[int, int]]:
    """{path of a module: (in, out)} for every 2-D square kernel, e.g. ('model', 'layers_0', 'self_attn', 'q_proj')."""
    flat = traverse_util.flatten_dict(params)
    return {path[:-1]: tuple(w.shape) for path, w in flat.items()
            if path[-1] == "kernel" and w.ndim == 2 and w.shape[0] == w.shape[1]}


def init_lora(rng: jax.Array, params, cfg: MiniMindConfig, rank: int = 8) -> dict:
    """Adapters {..module path..: {'a': [in, r] ~ N(0, 0.02), 'b': [r, out] = 0}} for every square kernel."""
    targets = lora_targets(params)
    if not targets:
        raise ValueError(f"init_lora: no square Linear in a model with hidden_size={cfg.hidden_size}")
    flat = {}
    for i, (path, (n_in, n_out)) in enumerate(sorted(targets.items())):
        flat[path + ("a",)] = 0.02 * jax.random.normal(jax.random.fold_in(rng, i), (n_in, rank), jnp.float32)
        flat[path + ("b",)] = jnp.zeros((rank, n_out), jnp.float32)
    return traverse_util.unflatten_dict(flat)


def apply_lora(params, lora_params) -> dict:
    """params with every adapted kernel replaced by W + A B (pure; differentiable in both arguments)."""
    flat = dict(traverse_util.flatten_dict(params))
    for path, ab in traverse_util.flatten_dict(lora_params, is_leaf=lambda _, x: "a" in x and "b" in x).items():
        kernel = flat[path + ("kernel",)]
        flat[path + ("kernel",)] = kernel + (ab["a"] @ ab["b"]).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)


def _torch_name(path: tuple[str, ...]) -> str:
    """('model', 'layers_0', 'self_attn', 'q_proj') -> 'model.layers.0.self_attn.q_proj'."""
    return ".".join(re.sub(r"^layers_(\d+)$", r"layers.\1", p) for p in path)


def lora_to_torch(lora_params, cfg: MiniMindConfig) -> dict[str, np.ndarray]:
    """The reference's saved names: '<module>.lora.A.weight' (r, in) and '<module>.lora.B.weight' (out, r)."""
    out = {}
    for path, ab in traverse_util.flatten_dict(lora_params, is_leaf=lambda _, x: "a" in x and "b" in x).items():
        name = _torch_name(path)
        out[f"{name}.lora.A.weight"] = np.ascontiguousarray(np.asarray(ab["a"]).T)
        out[f"{name}.lora.B.weight"] = np.ascontiguousarray(np.asarray(ab["b"]).T)
    return out


def lora_from_torch(state_dict: dict, params, cfg: MiniMindConfig, source: str = "state_dict",
                    rank: int | None = None) -> dict:
    """Adapters for `params`' square kernels from the reference's names; one-line errors name the tensor.

    Every tensor must belong to an adapter of this model (a file for another model size or layout is refused, not
    partly loaded), and with `rank` given every adapter must have that rank."""
    expected = {f"{_torch_name(path)}.lora.{x}.weight" for path in lora_targets(params) for x in "AB"}
    unexpected = sorted(set(state_dict) - expected)
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} tensors are no LoRA adapter of this model (first: "
                         f"{unexpected[0]}); expected names like {min(expected)}")
    flat = {}
    for path, (n_in, n_out) in lora_targets(params).items():
        name = _torch_name(path)
        a_name, b_name = f"{name}.lora.A.weight", f"{name}.lora.B.weight"
        for n in (a_name, b_name):
            if n not in state_dict:
                raise ValueError(f"{source}: missing LoRA tensor {n}")
        a, b = np.asarray(state_dict[a_name], np.float32), np.asarray(state_dict[b_name], np.float32)
        if a.ndim != 2 or a.shape[1] != n_in or b.shape != (n_out, a.shape[0]):
            raise ValueError(f"{source}: LoRA tensors {a_name} {a.shape} / {b_name} {b.shape} do not fit a "
                             f"({n_out}, {n_in}) weight")
        if rank is not None and a.shape[0] != rank:
            raise ValueError(f"{source}: {a_name} has rank {a.shape[0]}, the run's --lora_rank is {rank}")
        flat[path + ("a",)], flat[path + ("b",)] = jnp.asarray(a.T), jnp.asarray(b.T)
    return traverse_util.unflatten_dict(flat)
