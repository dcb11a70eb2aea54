"""2-D matmuls that accumulate in float32 and keep their operands in the compute dtype in both directions.

jnp.dot(x, w, preferred_element_type=float32) on bf16 operands is the right forward, but its autodiff is not: the
cotangent arrives in float32, and the transposed products promote the bf16 operand to float32, so a bf16 step
would run its whole backward as float32 matmuls. Here the backward casts the cotangent to the operands' dtype
first (what mixed-precision training does everywhere) and accumulates in float32 again. Float32 operands take
plain autodiff, so fp32 runs are exactly jnp.dot.

The weight gradient contracts over the rows of both operands (x^T @ ct). XLA:CPU has no bf16 kernel for a dot
whose operand is transposed, by its dimension numbers or by its layout, and runs it as a float32 dot of upcast
copies: half the speed, plus the copies. So the smaller operand is transposed into a row-major copy first (one
cheap pass) and the product is a plain row-major bf16 dot. Float32 products keep their dimension numbers: XLA:CPU
runs those as they are, at nearly full speed.
"""
import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))          # a [M, K] . b [K, N]
_NT = (((1,), (1,)), ((), ()))          # x [M, K] . w [N, K] over K: x @ w^T without a transposed copy


def _acc(a, b, dims):
    return lax.dot_general(a, b, dims, preferred_element_type=F32)


def transposed(a):                                   # [..., M, K] -> [..., K, M], row-major in memory
    """a with its last two axes swapped, as a real copy: for the operand of a product that contracts over its rows.

    A bare swapaxes is folded into the consumer's dimension numbers or layout, which is what must not happen here;
    the same transpose with a trailing unit axis is not."""
    return jnp.swapaxes(a[..., None], -3, -2)[..., 0]


def tn(a, b):
    """a [..., M, K], b [..., M, N] (same dtype) -> a^T @ b [..., K, N] float32 over the leading axes: a product over
    the rows (a weight gradient, attention's dK and dV)."""
    over = lambda spec, x, y: jnp.einsum(spec, x, y, preferred_element_type=F32)
    if a.dtype == F32:
        return over("...mk,...mn->...kn", a, b)
    if a.size <= b.size:
        return over("...km,...mn->...kn", transposed(a), b)
    return transposed(over("...nm,...mk->...nk", transposed(b), a))   # (b^T a)^T: the larger operand read in place


@jax.custom_vjp
def _dot_nn(x, w):                                   # [M, K] @ [K, N] -> f32 [M, N]
    return _acc(x, w, _NN)


def _dot_nn_fwd(x, w):
    return _dot_nn(x, w), (x, w)


def _dot_nn_bwd(res, ct):
    x, w = res
    ct = ct.astype(x.dtype)
    return _acc(ct, w, _NT).astype(x.dtype), tn(x, ct).astype(w.dtype)              # ct @ w^T, x^T @ ct


_dot_nn.defvjp(_dot_nn_fwd, _dot_nn_bwd)


@jax.custom_vjp
def _dot_nt(x, w):                                   # [M, K] @ [N, K]^T -> f32 [M, N]
    return _acc(x, w, _NT)


def _dot_nt_fwd(x, w):
    return _dot_nt(x, w), (x, w)


def _dot_nt_bwd(res, ct):
    x, w = res
    ct = ct.astype(x.dtype)
    return _acc(ct, w, _NN).astype(x.dtype), tn(ct, x).astype(w.dtype)              # ct @ w, ct^T @ x


_dot_nt.defvjp(_dot_nt_fwd, _dot_nt_bwd)


def dot(x, w, out_dtype=F32):
    """x [M, K] @ w [K, N] (same dtype), float32 accumulation -> [M, N] in out_dtype."""
    y = _acc(x, w, _NN) if x.dtype == F32 else _dot_nn(x, w)
    return y.astype(out_dtype)


def dot_t(x, w, out_dtype=F32):
    """x [M, K] @ w^T for w [N, K] (same dtype), float32 accumulation -> [M, N] in out_dtype."""
    y = _acc(x, w, _NT) if x.dtype == F32 else _dot_nt(x, w)
    return y.astype(out_dtype)
