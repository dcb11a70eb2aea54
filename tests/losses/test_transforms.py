"""jit, vmap and grad work on every function of the package: under jit, vmap gives the per-example numbers and grad
is finite and not identically zero. (Eager-versus-jit agreement is covered where the property tests call both.)

vmap maps over a leading axis of *every* argument (including trackers and tables, e.g. an ensemble of runs), with
two different inputs so that a function that ignored the mapped axis would fail.
"""
from functools import partial

import jax
import numpy as np
import pytest

import losses

rng = np.random.default_rng(0)
B, T, V, R = 4, 5, 7, 6


def f32(*shape, lo=-3.0, hi=0.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def ints(*shape, hi=V):
    return rng.integers(0, hi, shape).astype(np.int32)


def mask(*shape):
    m = (rng.uniform(size=shape) > 0.3).astype(np.int32)
    m[..., 0] = 1
    return m


def prefix(*shape):
    lengths = rng.integers(1, shape[-1] + 1, shape[0])
    return (np.arange(shape[-1])[None] < lengths[:, None]).astype(np.int32)


tracker, _ = losses.spo_tracker_update(losses.spo_tracker_init(), f32(B, lo=-3, hi=3), f32(B, R), prefix(B, R))
table = losses.spo_table_update(losses.spo_table_init(9, R, np.arange(9) % 3, 2), np.array([1, 4, 1, 7], np.int32),
                                f32(B, lo=0, hi=1), f32(B, lo=0.875, hi=0.96), ints(B, R, hi=50), f32(B, R),
                                prefix(B, R))
idx = np.array([4, 0, 7, 4], np.int32)

# (id, function, args, argnum to differentiate or None)
CASES = [
    ("token_logprobs", losses.token_logprobs, (f32(B, T, V, lo=-5, hi=5), ints(B, T)), 0),
    ("masked_ce", losses.masked_ce, (f32(B, T, V, lo=-5, hi=5), ints(B, T), mask(B, T)), 0),
    ("reason_ce", losses.reason_ce, (f32(B, T, V, lo=-5, hi=5), ints(B, T), mask(B, T), np.array([2, 5])), 0),
    ("distill_kl", losses.distill_kl, (f32(B, T, V, lo=-5, hi=5), f32(B, T, V + 2, lo=-5, hi=5), mask(B, T), 1.5), 0),
    ("sequence_logps", losses.sequence_logps, (f32(B, T), mask(B, T)), 0),
    ("dpo_loss", losses.dpo_loss, (f32(B, T), f32(B, T), mask(B, T), 0.1), 0),
    ("dpo_ipo_metrics", partial(losses.dpo_loss, return_metrics=True, loss_type="ipo"),
     (f32(B, T), f32(B, T), mask(B, T), 0.1), 0),
    ("grpo_advantages", partial(losses.grpo_advantages, num_generations=4), (f32(8, lo=-3, hi=3),), 0),
    ("grpo_loss", losses.grpo_loss, (f32(B, R), f32(B, R), f32(B, lo=-2, hi=2), prefix(B, R), 0.02), 0),
    ("grpo_loss_dr", partial(losses.grpo_loss, loss_norm="constant", kl_estimator="k1", return_metrics=True),
     (f32(B, R), f32(B, R), f32(B, lo=-2, hi=2), prefix(B, R), 0.02), 0),
    ("kl_k1", losses.kl_k1, (f32(B, R), f32(B, R)), 0),
    ("kl_k2", losses.kl_k2, (f32(B, R), f32(B, R)), 0),
    ("kl_k3", losses.kl_k3, (f32(B, R), f32(B, R)), 0),
    ("completion_mask", partial(losses.completion_mask, eos_id=2), (ints(B, R, hi=4),), None),
    ("masked_mean", losses.masked_mean, (f32(B, R), mask(B, R)), 0),
    ("whiten", losses.whiten, (f32(8, lo=-1, hi=1),), 0),
    ("ppo_loss", losses.ppo_loss, (f32(B, lo=-20, hi=-10), f32(B, lo=-20, hi=-10), f32(B, lo=-20, hi=-10),
                                   f32(B, lo=-1, hi=1), f32(B, lo=-3, hi=3), 0.1, 0.5, 0.02), 0),
    ("bradley_terry_loss", losses.bradley_terry_loss, (f32(B, lo=-2, hi=2), f32(B, lo=-2, hi=2)), 0),
    ("spo_baseline", losses.spo_baseline, (tracker,), None),
    ("spo_tracker_update", losses.spo_tracker_update, (tracker, f32(B, lo=-3, hi=3), f32(B, R), prefix(B, R)), None),
    ("spo_advantages", partial(losses.spo_advantages, batch_normalize=True), (f32(B, lo=-3, hi=3), np.float32(0.4)), 0),
    ("spo_loss", losses.spo_loss, (f32(B, R), f32(B, R), f32(B, lo=-2, hi=2), prefix(B, R), 0.02), 0),
    ("spo_table_baseline", losses.spo_table_baseline, (table, idx), None),
    ("spo_table_stored", losses.spo_table_stored, (table, idx), None),
    ("spo_table_rho", losses.spo_table_rho, (table, idx, f32(B, R)), None),
    ("spo_table_update", losses.spo_table_update,
     (table, idx, f32(B, lo=0, hi=1), f32(B, lo=0.875, hi=0.96), ints(B, R, hi=50), f32(B, R), prefix(B, R)), None),
    ("spo_paper_advantages", losses.spo_paper_advantages, (f32(B, lo=0, hi=1), f32(B, lo=0.1, hi=0.9)), 0),
    ("spo_paper_loss", partial(losses.spo_paper_loss, return_metrics=True),
     (f32(B, R), f32(B, R), f32(B, lo=-2, hi=2), prefix(B, R)), 0),
    ("spo_sampling_weights", losses.spo_sampling_weights, (f32(B, lo=0.05, hi=0.95),), 0),
    ("spo_resample", losses.spo_resample, (np.asarray(jax.random.PRNGKey(3)), f32(B, lo=0.05, hi=0.55)), None),
]


def perturbed(x):
    """A second, different input of the same structure (integers kept: they are ids, masks and counts)."""
    x = np.asarray(x)
    return x + np.float32(0.01) * (1 + np.arange(x.size).reshape(x.shape) % 3) if x.dtype.kind == "f" else x


def assert_tree_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6), a, b)


def scalar(out):
    """A scalar to differentiate: the loss of (loss, metrics), or the sum of squares of an array output."""
    out = out[0] if isinstance(out, tuple) else out
    return out if out.ndim == 0 else (out ** 2).sum()


@pytest.mark.parametrize("fn,args,argnum", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_jit_vmap_grad(fn, args, argnum):
    other = jax.tree.map(perturbed, args)
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), args, other)
    grad = (lambda *a: None) if argnum is None else jax.grad(lambda *a: scalar(fn(*a)), argnums=argnum)

    @jax.jit                        # one program per function: compiling is most of this test's time
    def run(args, other, stacked):
        return fn(*args), fn(*other), jax.vmap(fn)(*stacked), grad(*args)

    one, two, mapped, g = run(args, other, stacked)
    assert_tree_close(mapped, jax.tree.map(lambda a, b: np.stack([a, b]), one, two))
    if argnum is not None:
        assert g.shape == np.shape(args[argnum]) and np.all(np.isfinite(g)) and np.any(g != 0)
