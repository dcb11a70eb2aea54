"""2-D matmuls that accumulate in float32 and keep their operands in the compute dtype in both directions.

jnp.dot(x, w, preferred_element_type=float32) on bf16 operands is the right forward, but its autodiff is not: the
cotangent arrives in float32, and the transposed products promote the bf16 operand to float32, so a bf16 step
would run its whole backward as float32 matmuls. Here the backward casts the cotangent to the operands' dtype
first (what mixed-precision training does everywhere) and accumulates in float32 again. Float32 operands take
plain autodiff, so fp32 runs are exactly jnp.dot.
"""
import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))          # x [M, K] . w [N, K] over K: x @ w^T without a transposed copy
_TN = (((0,), (0,)), ((), ()))          # a [M, K] . b [M, N] over M: a^T @ b


def _acc(a, b, dims):
    return lax.dot_general(a, b, dims, preferred_element_type=F32)


@jax.custom_vjp
def _dot_nn(x, w):                                   # [M, K] @ [K, N] -> f32 [M, N]
    return _acc(x, w, (((1,), (0,)), ((), ())))


def _dot_nn_fwd(x, w):
    return _dot_nn(x, w), (x, w)


def _dot_nn_bwd(res, ct):
    x, w = res
    ct = ct.astype(x.dtype)
    return _acc(ct, w, _NT).astype(x.dtype), _acc(x, ct, _TN).astype(w.dtype)     # ct @ w^T, x^T @ ct


_dot_nn.defvjp(_dot_nn_fwd, _dot_nn_bwd)


@jax.custom_vjp
def _dot_nt(x, w):                                   # [M, K] @ [N, K]^T -> f32 [M, N]
    return _acc(x, w, _NT)


def _dot_nt_fwd(x, w):
    return _dot_nt(x, w), (x, w)


def _dot_nt_bwd(res, ct):
    x, w = res
    ct = ct.astype(x.dtype)
    return _acc(ct, w, (((1,), (0,)), ((), ()))).astype(x.dtype), _acc(ct, x, _TN).astype(w.dtype)   # ct @ w, ct^T @ x


_dot_nt.defvjp(_dot_nt_fwd, _dot_nt_bwd)


def dot(x, w, out_dtype=F32):
    """x [M, K] @ w [K, N] (same dtype), float32 accumulation -> [M, N] in out_dtype."""
    y = _acc(x, w, (((1,), (0,)), ((), ()))) if x.dtype == F32 else _dot_nn(x, w)
    return y.astype(out_dtype)


def dot_t(x, w, out_dtype=F32):
    """x [M, K] @ w^T for w [N, K] (same dtype), float32 accumulation -> [M, N] in out_dtype."""
    y = _acc(x, w, _NT) if x.dtype == F32 else _dot_nt(x, w)
    return y.astype(out_dtype)
