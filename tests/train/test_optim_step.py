"""The engine's pieces that need no model: schedules, gradient accumulation, fp16 loss scaling, data order."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, strategies as st

from train import optim
from train.batches import step_rows
from train.mesh import fsdp_spec, parse_mesh
from train.state import LossScale, TrainState
from train.step import make_train_step


def reference_rates(lr: float, epochs: int, iters: int, A: int) -> list[float]:
    """The rates the reference's loop hands to optimizer.step(), simulated: its micro-step counter starts at 1
    (`enumerate(loader, start=1)`), the rate is set before every micro-batch, and the optimizer steps when
    `(step + 1) % A == 0`."""
    get_lr = lambda s, S: lr * (0.1 + 0.45 * (1 + math.cos(math.pi * s / S)))
    rates = []
    for epoch in range(epochs):
        for step in range(1, iters + 1):
            rate = get_lr(epoch * iters + step, epochs * iters)
            if (step + 1) % A == 0:
                rates.append(rate)
    return rates


@pytest.mark.parametrize("epochs,iters", [(10, 1), (3, 7), (1, 100)])
def test_sft_schedule_at_accumulation_1_is_the_reference_loop(epochs, iters):
    lr = 5e-4
    expected = reference_rates(lr, epochs, iters, 1)
    sched = optim.sft_schedule(lr, epochs * iters, 1)
    assert [float(sched(k)) for k in range(len(expected))] == pytest.approx(expected, rel=1e-6)
    assert float(sched(len(expected) - 1)) == pytest.approx(lr / 10, rel=1e-6)    # the last update: exactly lr/10
    assert float(sched(0)) < lr


@pytest.mark.parametrize("A", [2, 4, 8])
def test_sft_schedule_at_accumulation_A_is_the_reference_loop(A):
    # Epochs whose micro-batches divide by A: the reference's updates then fall where this project's do.
    lr, epochs, iters = 1.0, 3, 5 * A
    expected = reference_rates(lr, epochs, iters, A)
    sched = optim.sft_schedule(lr, epochs * iters, A)
    assert len(expected) == epochs * iters // A
    assert [float(sched(k)) for k in range(len(expected))] == pytest.approx(expected, rel=1e-6)


def test_minimind3_schedule_is_the_upstream_table(shared_path):
    """MiniMind-3 steps at micro-steps A, 2A, ... and flushes after an epoch's last micro-batch: the rates of the
    upstream trainer's own table (7 micro-batches per epoch, 2 epochs, accumulation 3)."""
    import json
    table = json.loads(shared_path("minimind3/golden/schedules3.json").read_text())["sft_table"]
    expected = [r["lr"] for r in table if r["optimizer_step"] or r.get("flush_after_epoch")]
    sched = optim.sft_schedule3(1e-3, 7, 2, 3)
    assert [float(sched(k)) for k in range(len(expected))] == pytest.approx(expected, rel=1e-6)


def test_rl_schedule_is_cosine_to_a_tenth():
    sched = optim.rl_schedule(1e-6, 50)
    assert float(sched(0)) == pytest.approx(1e-6)
    assert float(sched(50)) == pytest.approx(1e-7)
    assert float(sched(25)) == pytest.approx(0.55e-6)


def _linear_loss(params, batch, rng, frozen, extra):
    pred = batch["x"] @ params["w"] + params["b"]                       # [B]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"loss": loss}


def _toy(seed=0, rows=8):
    k1, k2 = jax.random.split(jax.random.key(seed))
    batch = {"x": jax.random.normal(k1, (rows, 3)), "y": jax.random.normal(k2, (rows,))}
    params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    return params, batch


def test_accumulation_equals_one_big_batch():
    params, batch = _toy()
    tx = optim.adamw(lambda k: 1e-2, grad_clip=1.0)
    step = jax.jit(make_train_step(_linear_loss, tx))
    whole, _ = step(TrainState.create(params, tx, jax.random.PRNGKey(0)), jax.tree.map(lambda v: v[None], batch), {})
    split, m = step(TrainState.create(params, tx, jax.random.PRNGKey(0)), jax.tree.map(lambda v: v.reshape(4, 2, *v.shape[1:]), batch), {})
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(split.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(split.step) == 1 and set(m) >= {"loss", "grad_norm"}


def test_clipping_bounds_the_update_norm():
    params, batch = _toy()
    batch = {**batch, "y": batch["y"] * 1e4}                            # a huge gradient
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
    new, m = jax.jit(make_train_step(_linear_loss, tx))(TrainState.create(params, tx, jax.random.PRNGKey(0)),
                                                       jax.tree.map(lambda v: v[None], batch), {})
    delta = optax.global_norm(jax.tree.map(jnp.subtract, new.params, params))
    assert float(m["grad_norm"]) > 1e3 and float(delta) == pytest.approx(1.0, rel=1e-5)


def test_fp16_overflow_skips_the_update_and_halves_the_scale():
    params, batch = _toy()
    tx = optim.adamw(lambda k: 1e-2)
    state = TrainState.create(params, tx, jax.random.PRNGKey(0), {"loss_scale": LossScale.create(2.0**15)})
    bad = {**batch, "y": batch["y"].at[0].set(jnp.inf)}
    step = jax.jit(make_train_step(_linear_loss, tx))
    after, _ = step(state, jax.tree.map(lambda v: v[None], bad), {})
    assert float(after.extra["loss_scale"].scale) == 2.0**14
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    good, _ = step(state, jax.tree.map(lambda v: v[None], batch), {})
    assert float(good.extra["loss_scale"].scale) == 2.0**15 and int(good.extra["loss_scale"].good_steps) == 1
    assert not np.allclose(good.params["w"], state.params["w"])


def test_a_non_finite_step_changes_nothing_but_the_counters():
    params, batch = _toy()
    tx = optim.adamw(lambda k: 1e-2)
    step = jax.jit(make_train_step(_linear_loss, tx))
    state = TrainState.create(params, tx, jax.random.PRNGKey(0))
    bad = {**batch, "y": batch["y"].at[0].set(jnp.nan)}
    for n in (1, 2):
        state, m = step(state, jax.tree.map(lambda v: v[None], bad), {})
        assert int(m["nonfinite_streak"]) == n and int(state.nonfinite_total) == n and int(state.step) == n
        for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                        jax.tree.leaves((params, tx.init(params)))):
            np.testing.assert_array_equal(a, b)
    state, m = step(state, jax.tree.map(lambda v: v[None], batch), {})          # a good step: applied, streak reset
    assert int(m["nonfinite_streak"]) == 0 and int(state.nonfinite_total) == 2
    assert not np.allclose(state.params["w"], params["w"])


def test_loss_scale_grows_after_a_period_of_good_steps():
    ls = LossScale(jnp.float32(8.0), jnp.int32(0), period=3)
    for _ in range(3):
        ls = ls.adjust(jnp.bool_(True))
    assert float(ls.scale) == 16.0 and int(ls.good_steps) == 0


@given(n=st.integers(1, 200), A=st.integers(1, 4), B=st.sampled_from([1, 2, 4, 8]))
def test_step_rows_cover_the_epoch(n, A, B):
    perm = np.random.default_rng(n).permutation(n)
    steps = -(-n // (A * B))
    whole = np.concatenate([step_rows(perm, s, A, B).reshape(-1) for s in range(steps)])
    assert set(whole) == set(range(n)) and len(whole) == steps * A * B
    np.testing.assert_array_equal(whole[:n], perm)                      # consecutive entries of the permutation


def test_parse_mesh():
    assert parse_mesh(None, 4) == {"data": 4, "fsdp": 1}
    assert parse_mesh("data=2,fsdp=2", 4) == {"data": 2, "fsdp": 2}
    assert parse_mesh("fsdp=4", 8) == {"data": 2, "fsdp": 4}
    with pytest.raises(ValueError, match="uses 6 devices"):
        parse_mesh("data=3,fsdp=2", 4)
    with pytest.raises(ValueError, match="expected"):
        parse_mesh("model=2", 4)


def test_fsdp_spec_shards_the_largest_divisible_dim():
    assert fsdp_spec((6400, 512), 4) == jax.sharding.PartitionSpec("fsdp")
    assert fsdp_spec((512, 1408), 4) == jax.sharding.PartitionSpec(None, "fsdp")
    assert fsdp_spec((512,), 4) == jax.sharding.PartitionSpec()          # small: replicated
    assert fsdp_spec((6400, 512), 1) == jax.sharding.PartitionSpec()
