"""Every implementation of the model's hot ops computes the same function, values and gradients, on CPU.

Attention: the grouped CPU path against jax.nn.dot_product_attention (implementation="xla", the accelerator
path minus the cuDNN kernel), causal, left and right padding, GQA, a cached forward (prefill and decode, both cache
layouts). MoE: dense, slab, block, sorted and grouped (jax.lax.ragged_dot) dispatch, top-2 with a shared expert
and top-1 (both generations), skewed routing (the slab path's fallback), an expert with no pairs, runs shorter and
longer than the sorted path's window, capacity dropping; the same under a 4-device mesh with the experts split over
an `expert` axis (a subprocess).
"""
import contextlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimind_jax import KVCache, MiniMindConfig, MiniMindForCausalLM, attention, moe
from minimind_jax.generate import generate


@contextlib.contextmanager
def impls(attn=None, experts=None):
    old = attention.IMPL, moe.IMPL
    attention.IMPL, moe.IMPL = attn, experts
    try:
        yield
    finally:
        attention.IMPL, moe.IMPL = old


def close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=atol, rtol=0)


# ---- attention -----------------------------------------------------------------------------------------------

def test_choose_by_backend():
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert attention.choose(bf16, 64, backend="cpu") == "grouped"
    assert attention.choose(bf16, 64, backend="gpu") == "cudnn"
    assert attention.choose(bf16, 64, dropout=True, backend="gpu") == "grouped"      # our dropout masks
    assert attention.choose(f32, 64, backend="gpu") == "xla"                          # cuDNN is bf16/fp16 only
    assert attention.choose(bf16, 64, backend="tpu") == "xla"
    assert moe.choose(2720, 4, 2, backend="gpu") == "grouped" and moe.choose(2720, 4, 2, backend="cpu") == "sorted"
    assert moe.choose(4, 4, 2, backend="cpu") == "dense"
    with impls("xla", "block"):
        assert attention.choose(bf16, 64, backend="cpu") == "xla" and moe.choose(4, 4, 2) == "block"


def qkv(B=2, T=10, S=None, NH=4, KV=2, HD=8, seed=0):
    r = np.random.default_rng(seed)
    S = S or T
    return (jnp.asarray(r.normal(0, 1, (B, T, NH, HD)), jnp.float32), jnp.asarray(r.normal(0, 1, (B, S, KV, HD)),
            jnp.float32), jnp.asarray(r.normal(0, 1, (B, S, KV, HD)), jnp.float32))


PADDING = {"none": None, "left": np.array([[0, 0, 0] + [1] * 7, [1] * 10]),
           "right": np.array([[1] * 6 + [0] * 4, [1] * 10])}


@pytest.mark.parametrize("padding", PADDING)
@pytest.mark.parametrize("impl", ["xla", "cudnn"])          # cudnn: not on this machine, so its fallback (xla)
def test_self_attention_paths_agree(impl, padding):
    q, k, v = qkv()
    key_mask = None if PADDING[padding] is None else jnp.asarray(PADDING[padding])
    real = jnp.ones((2, 10)) if key_mask is None else key_mask.astype(jnp.float32)
    positions = jnp.arange(10)
    cot = jnp.asarray(np.random.default_rng(1).normal(0, 1, q.shape), jnp.float32) * real[:, :, None, None]

    def loss(impl, q, k, v):                     # padding queries' outputs are never used: weighted 0
        mask = attention.make_mask(impl, positions, key_mask, 10, cached=False)
        return jnp.sum(attention.attend(q, k, v, mask, "BSNH") * cot)

    ref = jax.grad(lambda *a: loss("grouped", *a), argnums=(0, 1, 2))(q, k, v)
    close(ref, jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2))(q, k, v), 1e-5)
    close(jax.jit(loss, static_argnums=0)("grouped", q, k, v), jax.jit(loss, static_argnums=0)(impl, q, k, v), 1e-4)


@pytest.mark.parametrize("layout", ["BNSH", "BSNH"])
def test_cached_attention_paths_agree(layout):
    """Queries at positions 5..7 (prefill) and 7 (decode) against 12 cache slots, the first two padding."""
    _, k, v = qkv(T=3, S=12)
    key_mask = jnp.asarray(np.array([[0, 0] + [1] * 6 + [0] * 4, [1] * 8 + [0] * 4]))
    kc, vc = (x.transpose(0, 2, 1, 3) for x in (k, v)) if layout == "BNSH" else (k, v)
    for T, start in ((3, 5), (1, 7)):
        q = qkv(T=T, seed=T)[0]
        positions = start + jnp.arange(T)
        outs = [attention.attend(q, kc, vc, attention.make_mask(impl, positions, key_mask, 12, cached=True), layout)
                for impl in ("grouped", "xla")]
        close(outs[0], outs[1], 1e-5)


TINY = dict(vocab_size=128, num_hidden_layers=2)


def tiny_model(generation=2, **kw):
    cfg = MiniMindConfig.from_preset("tiny", generation=generation, **TINY, **kw)
    model = MiniMindForCausalLM(cfg)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]


@pytest.mark.parametrize("generation", [2, 3])
def test_model_attention_paths_agree(generation):
    """Logits of real positions and the gradient of a masked loss, left-padded rows, grouped vs xla."""
    model, params = tiny_model(generation)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 128, (2, 12)), jnp.int32)
    mask = jnp.asarray(np.array([[0] * 4 + [1] * 8, [1] * 12]))

    def loss(params):
        logits = model.apply({"params": params}, ids, mask).logits
        return jnp.sum(jax.nn.log_softmax(logits)[..., 5] * mask), logits * mask[..., None]

    results = []
    for impl in ("grouped", "xla"):
        with impls(impl):
            results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(params))
    close(results[0], results[1], 2e-5)


def test_generate_attention_paths_agree():
    """Greedy decoding with the KV cache in each path's layout gives the same tokens."""
    model, params = tiny_model(3)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 128, (2, 6)), jnp.int32)
    mask = jnp.asarray(np.array([[0, 0, 1, 1, 1, 1], [1] * 6]))
    seqs = []
    for impl in ("grouped", "xla"):
        with impls(impl):
            assert KVCache.create(model.cfg, 2, 8).layout == attention.cache_layout(impl)
            seqs.append(generate(model, params, ids, mask, max_new_tokens=8, temperature=0, eos_token_id=None)
                        .sequences)
    np.testing.assert_array_equal(seqs[0], seqs[1])


# ---- MoE -----------------------------------------------------------------------------------------------------

def expert_args(N=600, H=16, I=24, E=4, k=2, skew=False, seed=0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(0, 1, (N, H)), jnp.float32)
    wg, wu = (jnp.asarray(r.normal(0, 0.3, (E, H, I)), jnp.float32) for _ in range(2))
    wd = jnp.asarray(r.normal(0, 0.3, (E, I, H)), jnp.float32)
    logits = jnp.asarray(r.normal(0, 1, (N, E)), jnp.float32) + (jnp.arange(E) == 0) * 4.0 * skew
    weight, idx = jax.lax.top_k(jax.nn.softmax(logits), k)
    return x, wg, wu, wd, weight, idx


@pytest.mark.parametrize("k,skew", [(2, False), (1, False), (2, True), (1, True)])
def test_expert_paths_agree(k, skew):
    """Values and gradients (x, every weight, the routing weights) of each dispatch against the dense one;
    `skew` sends most tokens to expert 0, past the slab path's capacity (its block fallback)."""
    args = expert_args(k=k, skew=skew)
    if skew:
        assert int(jnp.max(jnp.bincount(args[5].reshape(-1), length=4))) > moe.slab_capacity(600, 4, k, moe.SLAB_FACTOR)
    cot = jnp.asarray(np.random.default_rng(1).normal(0, 1, (600, 16)), jnp.float32)
    grads = {}
    for impl in moe.IMPLS:
        f = lambda *a: jnp.sum(moe.routed_experts(*a, args[5], impl=impl)[0] * cot)
        grads[impl] = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4)))(*args[:5])
    for impl in moe.IMPLS[1:]:
        close(grads["dense"], grads[impl], 2e-4)


@pytest.mark.parametrize("windows", [(8,), (32, 8), (64, 16, 8), (512, 128)])
def test_sorted_windows(windows):
    """The sorted path against the dense one when runs span many windows of each size, end inside one, or are
    shorter than the biggest, and when an expert gets no pair (routing forced off expert 3)."""
    x, wg, wu, wd, weight, idx = expert_args(N=96, E=4, k=2)
    idx = jnp.where(idx == 3, (idx + 1) % 3, idx)
    idx = jnp.where(idx[:, :1] == idx[:, 1:], jnp.stack([idx[:, 0], (idx[:, 0] + 1) % 3], 1), idx)
    sizes = jnp.bincount(idx.reshape(-1), length=4)
    assert int(sizes[3]) == 0 and int(jnp.max(sizes)) > 8
    cot = jnp.asarray(np.random.default_rng(1).normal(0, 1, (96, 16)), jnp.float32)
    f = lambda run: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(run(*a, idx) * cot), argnums=(0, 1, 2, 3, 4)))
    close(f(moe.dense_experts)(x, wg, wu, wd, weight),
          f(lambda *a: moe.sorted_experts(*a, windows=windows))(x, wg, wu, wd, weight), 1e-4)


def test_take_rows_transposes_by_gather():
    """take_rows' gradient (a gather by the inverse index) is the scatter-add that autodiff of the gather gives."""
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(0, 1, (5, 3)), jnp.float32)
    idx = jnp.asarray([3, 5, 0, 3, 5, 1, 0, 4])                 # row 2 never taken, 5 is the zero row
    inv = jnp.asarray([[2, 6], [5, 8], [8, 8], [0, 3], [7, 8]])  # where each row was taken; 8: nowhere
    cot = jnp.asarray(r.normal(0, 1, (8, 3)), jnp.float32)
    plain = lambda x: jnp.sum(jnp.concatenate([x, jnp.zeros((1, 3))])[idx] * cot)
    close(jax.grad(plain)(x), jax.grad(lambda x: jnp.sum(moe.take_rows(x, idx, inv) * cot))(x), 1e-6)


def test_capacity_drops_pairs_past_the_slab():
    """With a capacity factor the overflow pairs of an over-full expert contribute nothing, and their fraction
    is reported."""
    x, wg, wu, wd, weight, idx = expert_args(k=2, skew=True)
    capacity = moe.slab_capacity(600, 4, 2, 1.0)
    out, dropped = moe.routed_experts(x, wg, wu, wd, weight, idx, capacity_factor=1.0)
    slot, counts = moe.slab_slots(idx, 4, capacity)
    kept = (slot < 4 * capacity).reshape(idx.shape)
    expected = moe.dense_experts(x, wg, wu, wd, weight * kept, idx)
    close(out, expected, 1e-5)
    overflow = float(jnp.sum(jnp.maximum(counts - capacity, 0))) / idx.size
    assert float(dropped) == pytest.approx(overflow) and overflow > 0.1


@pytest.mark.parametrize("generation", [2, 3])
def test_model_expert_paths_agree(generation):
    """The MoE model's logits, aux loss and gradients, through each dispatch (top-2 + shared; top-1)."""
    model, params = tiny_model(generation, use_moe=True)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 128, (4, 96)), jnp.int32)

    def loss(params):
        out = model.apply({"params": params}, ids, train=True)
        return jnp.mean(jax.nn.log_softmax(out.logits)[..., 7]) + out.aux_loss, out.logits

    results = {}
    for impl in moe.IMPLS:
        with impls(experts=impl):
            results[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    for impl in moe.IMPLS[1:]:
        close(results["dense"], results[impl], 2e-5)


# ---- expert parallelism: 4 fake CPU devices ------------------------------------------------------------------

def _expert_parallel_job(report: str):
    """Runs in the subprocess: the tiny MoE's loss and gradients on a (data=2, expert=2) mesh with the experts
    split over `expert` (train.mesh's layout), per dispatch, written to `report`."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from train.mesh import make_mesh, state_sharding

    mesh = make_mesh("data=2,expert=2")
    model, params = tiny_model(2, use_moe=True)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 128, (4, 96)), jnp.int32)
    sharded = jax.device_put(params, state_sharding(params, mesh))
    assert sharded["model"]["layers_0"]["mlp"]["experts"]["gate_proj"]["kernel"].sharding.spec[0] == "expert"
    ids = jax.device_put(ids, NamedSharding(mesh, P(mesh.axis_names)))
    loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, ids, train=True).logits)[..., 7])
    out = {}
    for impl in ("grouped", "slab"):
        with impls(experts=impl):
            value, grads = jax.jit(jax.value_and_grad(loss))(sharded)
        out[impl] = [float(value)] + [np.asarray(g).ravel()[:64].tolist() for g in jax.tree.leaves(grads)]
    with open(report, "w") as f:
        json.dump(out, f)


def test_expert_parallel_matches_one_device(tmp_path):
    model, params = tiny_model(2, use_moe=True)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 128, (4, 96)), jnp.int32)
    loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, ids, train=True).logits)[..., 7])
    with impls(experts="dense"):
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
    report = tmp_path / "ep.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", f"from tests.minimind_jax.test_kernels import _expert_parallel_job as j; "
                    f"j({str(report)!r})"], env=env, check=True, timeout=600)
    for impl, got in json.loads(report.read_text()).items():
        assert got[0] == pytest.approx(float(value), abs=1e-6), impl
        for g, ref in zip(got[1:], jax.tree.leaves(grads)):
            np.testing.assert_allclose(g, np.asarray(ref).ravel()[:64], atol=1e-6, err_msg=impl)
