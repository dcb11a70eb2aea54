"""Precision policy: which dtype the weights are stored in, which the matmuls run in, which the logits come out in.

Every layer reads its dtypes from one Policy instead of scattering casts. Whatever the compute dtype, matmuls
accumulate in float32 (`preferred_element_type`: also the fastest path of XLA:CPU for bf16), and RMSNorm and
softmax run in float32.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Policy:
    param_dtype: np.dtype       # master weights (what the optimizer updates)
    compute_dtype: np.dtype     # activations and matmul operands
    output_dtype: np.dtype      # logits / values handed to the losses


_F32, _BF16, _F16 = np.dtype("float32"), np.dtype(jnp.bfloat16), np.dtype("float16")

# fp16 also needs dynamic loss scaling: the trainer owns that, the policy only carries the dtypes.
POLICIES = {
    "fp32": Policy(_F32, _F32, _F32),
    "bf16": Policy(_F32, _BF16, _F32),
    "fp16": Policy(_F32, _F16, _F32),
}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def get_policy(name: str = "fp32") -> Policy:
    """'fp32' | 'float32', 'bf16' | 'bfloat16', 'fp16' | 'float16'."""
    key = _ALIASES.get(name, name)
    if key not in POLICIES:
        raise ValueError(f"unknown precision {name!r}: choose fp32, bf16 or fp16 (or float32, bfloat16, float16)")
    return POLICIES[key]
