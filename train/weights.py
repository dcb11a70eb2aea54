"""Weights in and out of a run: the params a stage starts from, and the exported weights.safetensors + config.json.

An export is written whole or not at all (a temporary file renamed into place), so a killed run never leaves a
half-written weights file beside a good config.
"""
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.convert import load_weights
from minimind_jax.paths import WEIGHTS_FILE, resolve_weights
from train import rng
from train.config import TrainConfig
from train.errors import UsageError


def random_params(cfg: MiniMindConfig, key: jax.Array):
    """A fresh model's params (the reference's init), float32."""
    return jax.jit(MiniMindForCausalLM(cfg).init)(key, jnp.zeros((1, 8), jnp.int32))["params"]


def start_params(config: TrainConfig, name: str | None = None, cfg: MiniMindConfig | None = None,
                 flag: str = "--from_weight"):
    """The params a stage starts from: `name` (default --from_weight) loaded, or a random init for 'none'."""
    name = config.checkpoint.from_weight if name is None else name
    cfg = cfg or config.model
    if name in (None, "", "none"):
        return random_params(cfg, rng.stream(config.seed, "params"))
    try:
        path = resolve_weights(name, config.checkpoint.out_dir, cfg, flag)
        return load_weights(path, cfg)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError, ImportError, SafetensorError) as e:
        raise UsageError(f"{flag} {name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


FP16_MAX = float(np.finfo(np.float16).max)


def export_dtype(tensors: dict[str, np.ndarray]) -> np.dtype:
    """float16 like the reference, unless some weight lies beyond its range (65504): then float32, rather than
    weights that would read back as infinity."""
    beyond = any(np.max(np.abs(v), initial=0.0) > FP16_MAX for v in tensors.values())
    return np.dtype(np.float32 if beyond else np.float16)


def write_export(run_dir: Path, tensors: dict[str, np.ndarray], cfg: MiniMindConfig) -> None:
    """weights.safetensors (the reference's names; fp16, or fp32 where fp16 cannot hold them) and config.json,
    each replaced whole. Non-finite weights are never written."""
    bad = [k for k, v in tensors.items() if not np.all(np.isfinite(v))]
    if bad:
        raise UsageError(f"refusing to export non-finite weights ({bad[0]} and {len(bad) - 1} more) to {run_dir}")
    dtype = export_dtype(tensors)
    if dtype == np.float32:
        print(f"warning: some weights exceed the float16 range: {run_dir / WEIGHTS_FILE} is written as float32")
    run_dir.mkdir(parents=True, exist_ok=True)
    cast = {k: np.ascontiguousarray(v, dtype) for k, v in tensors.items()}
    _replace_atomically(run_dir / WEIGHTS_FILE, lambda tmp: save_file(cast, str(tmp)))
    _replace_atomically(run_dir / "config.json", lambda tmp: tmp.write_text(cfg.to_json()))
