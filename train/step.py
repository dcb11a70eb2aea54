"""The train step: gradients of the stage's loss over `accumulation_steps` micro-batches, one guarded Optax update
(`make_train_step`); or several guarded updates over the minibatches of one rollout (`make_minibatch_step`).

`loss_fn(params, batch, rng, frozen, extra) -> (loss, metrics)` is the stage's pure loss, with two
explicit extra arguments: `frozen` (teacher, reference policy, LoRA base: read, never differentiated) and `extra`
(the stage's state). They are arguments, not closures, so that XLA does not bake them into the program as constants.
"""
import jax
import jax.numpy as jnp
import optax

from train.state import LossScale, TrainState


def _tree_all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def grads_over_micro_batches(loss_fn, params, batch, rng, frozen, extra, scale):
    """(gradients, metrics) of `loss_fn` averaged over the leading micro-batch axis A of every batch leaf [A, B, ...]
    (the reference divides each micro-batch loss by A and lets backward accumulate), with a scan so memory holds
    one micro-batch. The loss is multiplied by `scale` (fp16 loss scaling) and the gradients divided back."""
    def micro_grads(micro, key):
        def scaled_loss(p):
            loss, metrics = loss_fn(p, micro, key, frozen, extra)
            return loss * scale, metrics
        (_, metrics), grads = jax.value_and_grad(scaled_loss, has_aux=True)(params)
        return jax.tree.map(lambda g: g / scale, grads), metrics

    num_micro = jax.tree.leaves(batch)[0].shape[0]
    keys = jax.random.split(rng, num_micro)
    if num_micro == 1:
        return micro_grads(jax.tree.map(lambda x: x[0], batch), keys[0])

    def accumulate(acc, xs):
        grads, metrics = micro_grads(*xs)
        return jax.tree.map(jnp.add, acc, grads), metrics
    grads, metrics = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), (batch, keys))
    return jax.tree.map(lambda g: g / num_micro, grads), jax.tree.map(jnp.mean, metrics)


def guarded_update(state: TrainState, grads, metrics, tx, update_extra=None, batch=None,
                   refuse=False) -> tuple[TrainState, dict]:
    """The state after one optimizer update with `grads` (and the stage's `update_extra` on the updated params) —
    unless the loss or the gradients are not finite, or
    `refuse` (a method's own reason to skip, e.g. PPO's early stop): then only the counters change.

    A step whose loss or gradients are not finite changes nothing but the counters: the weights, the optimizer and
    the stage's state stay those of the last good step, so nothing
    non-finite is ever saved. Under fp16 an overflowing gradient is the loss scale's business (halve it, skip the
    step); only a non-finite loss counts as bad there. A refused update is neither applied nor counted as bad.
    Does not advance `state.step` or the RNG."""
    loss_scale: LossScale | None = state.extra.get("loss_scale")
    refuse = jnp.asarray(refuse, bool)        # a Python False would turn `~` into integer negation
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = dict(state.extra)
    if update_extra is not None:
        extra = update_extra(extra, params, batch, state.step)
    loss = metrics["loss"]
    if loss_scale is not None:
        grads_finite = _tree_all_finite(grads)
        bad = ~jnp.isfinite(loss) & ~refuse
        apply = grads_finite & ~bad & ~refuse
        extra["loss_scale"] = jax.tree.map(lambda new, old: jnp.where(refuse, old, new),
                                           loss_scale.adjust(grads_finite), loss_scale)
        metrics = {**metrics, "loss_scale": loss_scale.scale}
    else:
        bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)) & ~refuse
        apply = ~bad & ~refuse
    params = _select(apply, params, state.params)
    opt_state = _select(apply, opt_state, state.opt_state)
    extra = {k: v if k == "loss_scale" else _select(apply, v, state.extra[k]) if k in state.extra else v
             for k, v in extra.items()}
    streak = jnp.where(bad, state.nonfinite_streak + 1, jnp.where(apply, 0, state.nonfinite_streak))
    metrics = {**metrics, "grad_norm": grad_norm, "nonfinite_streak": streak}
    state = state.replace(params=params, opt_state=opt_state, extra=extra, nonfinite_streak=streak,
                          nonfinite_total=state.nonfinite_total + bad)
    return state, metrics


def make_train_step(loss_fn, tx: optax.GradientTransformation, update_extra=None):
    """Returns step(state, batch, frozen) -> (state, metrics), ready to jit with the state donated.

    Every batch leaf carries a leading micro-batch axis [A, B, ...]; gradients are averaged over A."""
    def step(state: TrainState, batch, frozen):
        loss_scale: LossScale | None = state.extra.get("loss_scale")
        scale = loss_scale.scale if loss_scale is not None else jnp.float32(1.0)
        rng, step_rng = jax.random.split(state.rng)
        grads, metrics = grads_over_micro_batches(loss_fn, state.params, batch, step_rng, frozen, state.extra, scale)
        state, metrics = guarded_update(state, grads, metrics, tx, update_extra, batch)
        return state.replace(step=state.step + 1, rng=rng), metrics

    return step


def make_minibatch_step(loss_fn, tx: optax.GradientTransformation, update_extra=None):
    """Several optimizer updates per call, for methods that reuse one rollout (PPO's epochs over minibatches).

    Every batch leaf is [U, M, ...]: U updates in order, M rows each. Update u runs the loss on its rows under the
    params left by update u - 1, through the same guard as `make_train_step` (a non-finite update is not
    applied). The loss's metric `stop` (> 0: stop) refuses this update and every later one of the call, so a
    stopped rollout never moves the weights or the optimizer's moments again. Metrics are means over the applied
    updates, plus `updates` (how many were applied) and `stopped`."""
    def step(state: TrainState, batch, frozen):
        loss_scale: LossScale | None = state.extra.get("loss_scale")
        rng, step_rng = jax.random.split(state.rng)
        U = jax.tree.leaves(batch)[0].shape[0]

        def one_update(carry, xs):
            state, stopped = carry
            minibatch, key = xs
            scale = state.extra["loss_scale"].scale if loss_scale is not None else jnp.float32(1.0)
            grads, metrics = grads_over_micro_batches(loss_fn, state.params, jax.tree.map(lambda x: x[None], minibatch),
                                                      key, frozen, state.extra, scale)
            stopped = stopped | (metrics.get("stop", 0.0) > 0)
            before = state.nonfinite_total
            state, metrics = guarded_update(state, grads, metrics, tx, refuse=stopped)
            applied = ~stopped & (state.nonfinite_total == before)
            return (state, stopped), (metrics, applied)

        (state, stopped), (metrics, applied) = jax.lax.scan(
            one_update, (state, jnp.zeros((), bool)), (batch, jax.random.split(step_rng, U)))
        weights = applied.astype(jnp.float32)
        count = jnp.sum(weights)
        mean = lambda x: jnp.where(count > 0, jnp.sum(x * weights) / jnp.maximum(count, 1.0), jnp.mean(x))
        metrics = {k: v[-1] if k == "nonfinite_streak" else mean(v) for k, v in metrics.items()}
        metrics = {**metrics, "updates": count, "stopped": stopped.astype(jnp.float32)}
        if update_extra is not None:
            state = state.replace(extra=update_extra(state.extra, state.params, batch, state.step))
        return state.replace(step=state.step + 1, rng=rng), metrics

    return step
