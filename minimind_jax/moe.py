"""The routed experts of an MoE layer: sum_j w_j * expert_{e_j}(x) over each token's top-k picks, five ways.

All take x [N, H], the stacked SwiGLU weights w_gate/w_up [E, H, I], w_down [E, I, H] and the routing
topk_weight/topk_idx [N, k], and return [N, H] float32; products run in x's dtype and accumulate in float32.

    dense    every expert on every token, unchosen ones weighted 0 (E/k times the routed FLOPs): a few tokens
    slab     tokens (not weights) gathered into one slab of `capacity` rows per expert, a static loop of 2-D
             dots over the E experts with each weight read in place: XLA:CPU's fast path for training and prefill.
             Exact: when some expert gets more pairs than its slab holds, a `lax.cond` runs `block` instead;
             with a capacity factor the overflow is dropped instead (reported as the dropped fraction)
    block    pairs sorted by expert into blocks of `block` rows, a batched matmul over the blocks with each
             block's expert's weights gathered (exact for any routing; the slab path's fallback)
    sorted   tokens (not weights) gathered into one array sorted by expert, each expert's run read in windows by
             loops of 2-D dots on its weights in place: the routed FLOPs plus under 64 rows per expert, exact for
             any routing, no scatter-add either way, a written-out backward. The CPU's choice for many tokens
    grouped  pairs sorted by expert, one grouped matmul (jax.lax.ragged_dot) per projection over the group
             sizes: accelerators. On XLA:CPU ragged_dot is lowered to a masked dense product (E times the
             FLOPs), so the CPU never chooses it

`choose` picks one by backend and token count; IMPL overrides it (tests).
"""
import functools
import math
import os

import jax
import jax.numpy as jnp
from jax import lax

from minimind_jax import dots

F32 = jnp.float32
IMPLS = ("dense", "slab", "block", "sorted", "grouped")

# Force one implementation (one of IMPLS); None chooses (`choose`). Read when a function is traced. MINIMIND_MOE sets
# its default.
IMPL: str | None = os.environ.get("MINIMIND_MOE") or None
BLOCK = 256             # rows per block of the block path
WINDOWS = (256, 64)     # the sorted path's window sizes (`_windows`)
SLAB_FACTOR = 1.25      # exact slab path: each expert's slab holds this times its balanced share of the pairs


def choose(tokens: int, experts: int, top_k: int, backend: str | None = None) -> str:
    """The expert dispatch for `tokens` routed tokens on this backend (jax.default_backend() unless given)."""
    if IMPL is not None:
        if IMPL not in IMPLS:
            raise ValueError(f"moe.IMPL {IMPL!r}: choose one of {IMPLS}")
        return IMPL
    if (backend or jax.default_backend()) != "cpu":
        return "grouped"
    # Sparse dispatch pays when the padding it adds (a window per expert) is small against the E - k experts a
    # token skips; a few decoding tokens are cheaper dense. In the whole 640x8 MoE training step (batch 8 x 340) on
    # a quiet XLA:CPU the sorted path measured 190 tokens/s and 7.8 GB against the block path's 148 and 11.2 GB
    # (the reference: 214), so tokens are gathered rather than weights; the slab path remains for
    # MINIMIND_MOE=slab and capacity routing.
    return "sorted" if tokens * (experts - top_k) > 2 * experts * BLOCK else "dense"


def swiglu(x, w_gate, w_up, w_down, scale=None):
    """down(silu(x @ gate) * (x @ up) [* scale]) for one expert: x [M, H] -> [M, H] float32.

    gate and up are one dot against [gate | up] ([H, 2I]): one pass over x, and ~20% off the slab path's step
    on XLA:CPU for the price of copying the two kernels together.
    """
    I = w_gate.shape[-1]
    gate_up = dots.dot(x, jnp.concatenate([w_gate, w_up], axis=-1))       # [M, 2I] f32
    act = jax.nn.silu(gate_up[:, :I]) * gate_up[:, I:]
    if scale is not None:
        act = act * scale[:, None]
    return dots.dot(act.astype(x.dtype), w_down)


def dense_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx):
    """Every expert on every token, unchosen ones weighted 0: sum_e w_e down_e(a_e) = [down_1..down_E] @ [w_e a_e].

    x [N, H], w_gate/w_up [E, H, I], w_down [E, I, H], topk_* [N, k] -> [N, H] f32. E/k times the routed FLOPs.
    """
    N, E, I = x.shape[0], w_gate.shape[0], w_gate.shape[2]
    combine = jnp.einsum("nk,nke->ne", topk_weight, jax.nn.one_hot(topk_idx, E, dtype=F32))             # [N, E]
    gate = jnp.einsum("nh,ehi->nei", x, w_gate, preferred_element_type=F32)                              # [N, E, I]
    up = jnp.einsum("nh,ehi->nei", x, w_up, preferred_element_type=F32)
    act = (jax.nn.silu(gate) * up * combine[:, :, None]).astype(x.dtype)
    return jnp.dot(act.reshape(N, E * I), w_down.reshape(E * I, -1), preferred_element_type=F32)


def block_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx, block: int = BLOCK):
    """The same sum over only the chosen (token, expert) pairs, with static shapes: the N*k pairs sorted by expert,
    each expert's run padded to whole blocks of `block` rows, one batched matmul over the blocks with each block's
    expert's weights, and the rows added back to their tokens. Padding rows have weight 0.

    Slots M = N*k + E*(block-1) rounded up to blocks; each block reads its own copy of its expert's weights.
    """
    N, H = x.shape
    E, k = w_gate.shape[0], topk_idx.shape[1]
    A = N * k
    M = -(-(A + E * (block - 1)) // block) * block
    expert = topk_idx.reshape(-1)                                            # [A] expert of each pair
    order = jnp.argsort(expert, stable=True)
    sizes = jnp.bincount(expert, length=E)                                   # [E] pairs per expert
    padded = (sizes + block - 1) // block * block                            # [E] its run, whole blocks
    padded_end = jnp.cumsum(padded)
    sorted_start = jnp.cumsum(sizes) - sizes                                 # [E] its first pair in sorted order
    sorted_expert = expert[order]
    slot = (padded_end - padded)[sorted_expert] + jnp.arange(A) - sorted_start[sorted_expert]   # [A]
    token = jnp.zeros((M,), jnp.int32).at[slot].set(order // k)              # [M] padding rows read token 0 ...
    weight = jnp.zeros((M,), F32).at[slot].set(topk_weight.reshape(-1)[order])   # ... with weight 0
    block_expert = jnp.minimum(jnp.searchsorted(padded_end, jnp.arange(M // block) * block, side="right"),
                               E - 1)                                        # [M / block]
    xb = x[token].reshape(M // block, block, H)
    # Products in x's dtype (float32 accumulation inside): their autodiff then keeps bf16 operands.
    product = lambda spec, a, b: jnp.einsum(spec, a, b, preferred_element_type=x.dtype).astype(F32)
    gate = product("bch,bhi->bci", xb, w_gate[block_expert])
    up = product("bch,bhi->bci", xb, w_up[block_expert])
    act = (jax.nn.silu(gate) * up * weight.reshape(M // block, block, 1)).astype(x.dtype)
    rows = product("bci,bih->bch", act, w_down[block_expert]).reshape(M, H)
    return jnp.zeros((N, H), F32).at[token].add(rows)


def slab_capacity(tokens: int, experts: int, top_k: int, factor: float) -> int:
    """Rows of each expert's slab: `factor` times the balanced share N*k/E, a multiple of 8, at most N (a token
    picks an expert at most once)."""
    return min(tokens, -(-math.ceil(factor * tokens * top_k / experts) // 8) * 8)


def slab_slots(topk_idx, experts: int, capacity: int):
    """Each pair's row in the [E * capacity] slabs: expert * capacity + its rank among that expert's pairs (in
    token order), or E * capacity (dropped) past the capacity. -> (slot [N*k], pairs per expert [E])."""
    expert = topk_idx.reshape(-1)                                            # [A]
    onehot = jax.nn.one_hot(expert, experts, dtype=jnp.int32)                # [A, E]
    rank = jnp.sum((jnp.cumsum(onehot, axis=0) - onehot) * onehot, axis=1)   # [A] earlier pairs of its expert
    slot = jnp.where(rank < capacity, expert * capacity + rank, experts * capacity)
    return slot, jnp.sum(onehot, axis=0)


def slab_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx, capacity: int):
    """The routed sum with each expert's pairs in its own slab of `capacity` rows: x's rows gathered into
    [E, capacity, H], one SwiGLU per expert on its slab (2-D dots, weights read in place), rows added back to
    their tokens. Empty slab rows read token 0 with weight 0; pairs past their slab are dropped (the caller
    makes sure there are none, or wants them dropped)."""
    N, H = x.shape
    E, k = w_gate.shape[0], topk_idx.shape[1]
    slot, _ = slab_slots(topk_idx, E, capacity)                              # [A]
    token = jnp.zeros((E * capacity,), jnp.int32).at[slot].set(jnp.arange(N * k) // k, mode="drop")
    weight = jnp.zeros((E * capacity,), F32).at[slot].set(topk_weight.reshape(-1), mode="drop")
    xs = x[token].reshape(E, capacity, H)                                    # [E, C, H]
    ws = weight.reshape(E, capacity)
    rows = jnp.concatenate([swiglu(xs[e], w_gate[e], w_up[e], w_down[e], ws[e]) for e in range(E)])  # [E*C, H]
    return jnp.zeros((N, H), F32).at[token].add(rows)


def exact_slab_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx, factor: float = SLAB_FACTOR):
    """slab_experts with slabs of `factor` times the balanced share, or block_experts when an expert's pairs
    overflow its slab (only the branch taken runs): always exact."""
    N, E, k = x.shape[0], w_gate.shape[0], topk_idx.shape[1]
    capacity = slab_capacity(N, E, k, factor)
    fits = jnp.max(jnp.bincount(topk_idx.reshape(-1), length=E)) <= capacity
    args = (x, w_gate, w_up, w_down, topk_weight, topk_idx)
    return lax.cond(fits, lambda a: slab_experts(*a, capacity), lambda a: block_experts(*a), args)


def grouped_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx):
    """The routed sum as grouped matmuls: the N*k pairs sorted by expert ([A, H], A = N*k), each projection one
    jax.lax.ragged_dot over the E groups of sizes `sizes`, the rows gathered back into [N, k, H] (a gather, not a
    scatter-add) and summed with their routing weights in float32."""
    N, H = x.shape
    E, k = w_gate.shape[0], topk_idx.shape[1]
    expert = topk_idx.reshape(-1)                                            # [A]
    order = jnp.argsort(expert, stable=True)                                 # [A] pairs by expert
    sizes = jnp.bincount(expert, length=E).astype(jnp.int32)                 # [E]
    I, cd = w_gate.shape[-1], x.dtype
    xs = x[order // k]                                                       # [A, H]
    # Products come out in the compute dtype (accumulated in float32 inside the kernel), so their autodiff keeps
    # bf16 operands: a float32 output would make the transposed products promote them to float32.
    gate_up = lax.ragged_dot(xs, jnp.concatenate([w_gate, w_up], axis=-1), sizes, preferred_element_type=cd)
    act = (jax.nn.silu(gate_up[:, :I].astype(F32)) * gate_up[:, I:]).astype(cd)   # [A, I]
    rows = lax.ragged_dot(act, w_down, sizes, preferred_element_type=cd)     # [A, H]
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(N * k, dtype=order.dtype))   # pair -> sorted row
    return jnp.sum(rows[inverse].reshape(N, k, H).astype(F32) * topk_weight[:, :, None], axis=1)


def take_rows(x, idx, inv):
    """Rows `idx` of x with a zero row appended: x [R, H], idx [M] in [0, R] (R: the zero row) -> [M, H].

    A gather whose transpose is a gather too, by inv [R, c] (the positions in idx that took each row; M where fewer
    than c did), summed over c: XLA:CPU's scatter-add, what autodiff would transpose the gather into, is a serial
    loop over rows. Exact when each row r is taken exactly at inv[r] (and nowhere else)."""
    return _take_rows(x, idx, inv)


def _with_zero_row(x):
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])


@jax.custom_vjp
def _take_rows(x, idx, inv):
    return _with_zero_row(x)[idx]


def _take_rows_fwd(x, idx, inv):
    return _take_rows(x, idx, inv), (idx, inv)


def _take_rows_bwd(res, g):
    idx, inv = res
    return jnp.sum(_with_zero_row(g)[inv], axis=1), None, None          # [R, c, H] -> [R, H]


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def _mm(a, b, dims, out_dtype):
    """One 2-D dot accumulating in float32, out in out_dtype."""
    return lax.dot_general(a, b, dims, preferred_element_type=F32).astype(out_dtype)


_NN = (((1,), (0,)), ((), ()))          # [M, K] @ [K, N]
_NT = (((1,), (1,)), ((), ()))          # [M, K] @ [N, K]^T


def _windows(start, size, windows: tuple[int, ...], step, carry):
    """carry = step(carry, row, valid) over the run of rows [start, start + size), in order: windows of
    windows[0] rows while whole ones fit, then of windows[1], ..., and of the last size until the run is covered
    (valid [w] bool marks a window's rows inside the run).

    Big windows first: each backward window adds its [H, 2I] weight gradient into the accumulator, a pass over
    memory that a bigger window amortises; small ones last: the last window's rows past the run are computed for
    nothing. Those rows belong to the next run (or padding), whose own windows, run after these, overwrite them."""
    row, left = start, size
    for i, w in enumerate(windows):
        n = (left + w - 1) // w if i == len(windows) - 1 else left // w
        body = lambda j, carry, w=w, row=row, left=left: step(carry, row + j * w, j * w + jnp.arange(w) < left)
        carry = lax.fori_loop(0, n, body, carry)
        row, left = row + n * w, left - n * w
    return carry


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def sorted_swiglu(xs, w_gate, w_up, w_down, starts, sizes, windows: tuple[int, ...]):
    """SwiGLU of each expert on its run of rows: xs [R, H] sorted by expert (expert e's rows at
    [starts[e], starts[e] + sizes[e]), then at least windows[-1] - 1 rows of padding), w_gate/w_up [E, H, I],
    w_down [E, I, H] -> [R, H] in xs's dtype (rows outside every run are undefined).

    Each run is read in windows (`_windows`), loops of 2-D dots on its expert's weights in place: the FLOPs of the
    routed pairs plus under windows[-1] rows per expert. The backward is written out (silu recomputed from the saved
    pre-activations [R, 2I]) because autodiff of the loops would stack every window's operands."""
    return _sorted_fwd(xs, w_gate, w_up, w_down, starts, sizes, windows)[0]


def _gate_up(w_gate, w_up, e):
    """Expert e's [gate | up] kernel [H, 2I]: one dot per window reads x once. Concatenated from the two slices
    (one copy) outside the window loop: inside, XLA copies it on every window."""
    return jnp.concatenate([w_gate[e], w_up[e]], axis=-1)


def _sorted_fwd(xs, w_gate, w_up, w_down, starts, sizes, windows):
    cd, I = xs.dtype, w_down.shape[1]

    def step(w_gate_up, w_down, carry, row, valid):
        out, pre = carry
        xw = lax.dynamic_slice_in_dim(xs, row, valid.shape[0])                      # [W, H]
        gate_up = _mm(xw, w_gate_up, _NN, cd)                                       # [W, 2I]
        g32 = gate_up.astype(F32)
        act = (jax.nn.silu(g32[:, :I]) * g32[:, I:]).astype(cd)                     # [W, I]
        out = lax.dynamic_update_slice_in_dim(out, _mm(act, w_down, _NN, cd), row, 0)
        return out, lax.dynamic_update_slice_in_dim(pre, gate_up, row, 0)

    carry = (jnp.zeros(xs.shape, cd), jnp.zeros((xs.shape[0], 2 * I), cd))      # out [R, H], pre [R, 2I]
    for e in range(w_gate.shape[0]):
        carry = _windows(starts[e], sizes[e], windows, functools.partial(step, _gate_up(w_gate, w_up, e), w_down[e]),
                         carry)
    return carry[0], (xs, w_gate, w_up, w_down, starts, sizes, carry[1])


def _sorted_bwd(windows, res, ct):
    xs, w_gate, w_up, w_down, starts, sizes, pre = res
    cd, (E, H, I) = xs.dtype, w_gate.shape

    def step(w_gate_up, w_down, carry, row, valid):
        dxs, d_gate_up, d_down = carry
        window = lambda a: lax.dynamic_slice_in_dim(a, row, valid.shape[0])
        g = jnp.where(valid[:, None], window(ct), 0).astype(cd)                      # [W, H]
        xw = window(xs)                                                             # [W, H]
        gate_up = window(pre).astype(F32)                                           # [W, 2I]
        gate, up = gate_up[:, :I], gate_up[:, I:]
        sig = jax.nn.sigmoid(gate)
        d_act = _mm(g, w_down, _NT, F32)                                            # [W, I]
        d_down = d_down + dots.tn((gate * sig * up).astype(cd), g)                   # [I, H]
        d_pre = jnp.concatenate([d_act * up * sig * (1 + gate * (1 - sig)), d_act * gate * sig], 1).astype(cd)
        d_gate_up = d_gate_up + dots.tn(xw, d_pre)                                  # [H, 2I]
        dxs = lax.dynamic_update_slice_in_dim(dxs, _mm(d_pre, w_gate_up, _NT, cd), row, 0)
        return dxs, d_gate_up, d_down

    dxs, d_gate_up, d_down = jnp.zeros(xs.shape, cd), [], []
    for e in range(E):
        step_e = functools.partial(step, _gate_up(w_gate, w_up, e), w_down[e])
        dxs, dgu, dd = _windows(starts[e], sizes[e], windows, step_e,
                                (dxs, jnp.zeros((H, 2 * I), F32), jnp.zeros((I, H), F32)))
        d_gate_up.append(dgu)
        d_down.append(dd)
    d_gate = jnp.stack([d[:, :I] for d in d_gate_up]).astype(w_gate.dtype)         # [E, H, I]
    d_up = jnp.stack([d[:, I:] for d in d_gate_up]).astype(w_up.dtype)
    return dxs, d_gate, d_up, jnp.stack(d_down).astype(w_down.dtype), None, None


sorted_swiglu.defvjp(_sorted_fwd, _sorted_bwd)


def sorted_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx, windows: tuple[int, ...] = WINDOWS):
    """The routed sum over exactly the chosen pairs, no token dropped: the N*k pairs sorted by expert into
    xs [A + windows[-1], H] (A = N*k), each expert's run through its SwiGLU in windows (sorted_swiglu), the rows
    gathered back to their pairs and summed with the routing weights in float32. Every gather's transpose is a
    gather (take_rows), so neither direction has a scatter-add."""
    N, H = x.shape
    E, k = w_gate.shape[0], topk_idx.shape[1]
    A = N * k
    windows = tuple(w for w in windows[:-1] if w <= A) + windows[-1:]        # none bigger than the pairs
    expert = topk_idx.reshape(-1)                                            # [A] expert of pair p = n*k + j
    order = jnp.argsort(expert, stable=True).astype(jnp.int32)              # [A] sorted row -> pair
    rank = jnp.zeros((A,), jnp.int32).at[order].set(jnp.arange(A, dtype=jnp.int32))   # [A] pair -> sorted row
    sizes = jnp.bincount(expert, length=E).astype(jnp.int32)                # [E]
    starts = jnp.cumsum(sizes) - sizes                                       # [E]
    pad = lambda v, fill: jnp.concatenate([v, jnp.full((windows[-1],), fill, jnp.int32)])
    xs = take_rows(x, pad(order // k, N), rank.reshape(N, k))                # [A + W, H], padding rows 0
    rows = sorted_swiglu(xs, w_gate, w_up, w_down, starts, sizes, windows)   # [A + W, H]
    pairs = take_rows(rows, rank, pad(order, A)[:, None])                    # [A, H]
    return jnp.einsum("nkh,nk->nh", pairs.reshape(N, k, H).astype(F32), topk_weight)


def dropped_fraction(topk_idx, experts: int, capacity: int):
    """Fraction of the (token, expert) pairs that do not fit their expert's slab of `capacity` rows."""
    slot, _ = slab_slots(topk_idx, experts, capacity)
    return jnp.mean((slot == experts * capacity).astype(F32))


def routed_experts(x, w_gate, w_up, w_down, topk_weight, topk_idx, capacity_factor: float | None = None,
                   impl: str | None = None):
    """The routed sum by `impl` (default: choose). capacity_factor: drop the pairs past slabs of that many times
    the balanced share (the slab path, on any backend) instead of computing every pair.
    -> ([N, H] float32, dropped fraction of pairs, float32 scalar)."""
    N, E, k = x.shape[0], w_gate.shape[0], topk_idx.shape[1]
    args = (x, w_gate, w_up, w_down, topk_weight, topk_idx)
    if capacity_factor:
        capacity = slab_capacity(N, E, k, capacity_factor)
        return slab_experts(*args, capacity), dropped_fraction(topk_idx, E, capacity)
    impl = impl or choose(N, E, k)
    run = {"dense": dense_experts, "slab": exact_slab_experts, "block": block_experts, "sorted": sorted_experts,
           "grouped": grouped_experts}[impl]
    return run(*args), jnp.zeros((), F32)
