"""The train step: gradients of the stage's loss over `accumulation_steps` micro-batches, one Optax update.

`loss_fn(params, batch, rng, frozen, extra) -> (loss, metrics)` is the stage's pure loss, with two
explicit extra arguments: `frozen` (teacher, reference policy, LoRA base: read, never differentiated) and `extra`
(the stage's state). They are arguments, not closures, so that XLA does not bake them into the program as constants.
"""
from functools import partial

import jax
import jax.numpy as jnp
import optax

from train.state import LossScale, TrainState


def _tree_all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def make_train_step(loss_fn, tx: optax.GradientTransformation, update_extra=None):
    """Returns step(state, batch, frozen) -> (state, metrics), ready to jit with the state donated.

    Every batch leaf carries a leading micro-batch axis [A, B, ...]. Gradients are averaged over A (the reference
    divides each micro-batch loss by A and lets backward accumulate), with a scan so memory holds one micro-batch.
    """
    def micro_grads(params, micro, rng, frozen, extra, scale):
        def scaled_loss(p):
            loss, metrics = loss_fn(p, micro, rng, frozen, extra)
            return loss * scale, metrics
        (_, metrics), grads = jax.value_and_grad(scaled_loss, has_aux=True)(params)
        return jax.tree.map(lambda g: g / scale, grads), metrics

    def step(state: TrainState, batch, frozen):
        loss_scale: LossScale | None = state.extra.get("loss_scale")
        scale = loss_scale.scale if loss_scale is not None else jnp.float32(1.0)
        rng, step_rng = jax.random.split(state.rng)
        num_micro = jax.tree.leaves(batch)[0].shape[0]
        rngs = jax.random.split(step_rng, num_micro)
        grads_of = partial(micro_grads, state.params, frozen=frozen, extra=state.extra, scale=scale)

        if num_micro == 1:
            grads, metrics = grads_of(jax.tree.map(lambda x: x[0], batch), rngs[0])
        else:
            def accumulate(acc, xs):
                grads, metrics = grads_of(*xs)
                return jax.tree.map(jnp.add, acc, grads), metrics
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            grads, metrics = jax.lax.scan(accumulate, zeros, (batch, rngs))
            grads = jax.tree.map(lambda g: g / num_micro, grads)
            metrics = jax.tree.map(jnp.mean, metrics)

        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra = dict(state.extra)
        if update_extra is not None:
            extra = update_extra(extra, params, batch, state.step)
        # A step whose loss or gradients are not finite changes nothing but the counters: the weights, the
        # optimizer and the stage's state stay those of the last good step, so nothing non-finite is ever saved.
        # Under fp16 an overflowing gradient is the loss scale's business (halve it, skip the step); only a
        # non-finite loss counts as bad there.
        loss = metrics["loss"]
        if loss_scale is not None:
            grads_finite = _tree_all_finite(grads)
            bad = ~jnp.isfinite(loss)
            apply = grads_finite & ~bad
            extra["loss_scale"] = loss_scale.adjust(grads_finite)
            metrics = {**metrics, "loss_scale": scale}
        else:
            bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
            apply = ~bad
        params = _select(apply, params, state.params)
        opt_state = _select(apply, opt_state, state.opt_state)
        extra = {k: v if k == "loss_scale" else _select(apply, v, state.extra[k]) if k in state.extra else v
                 for k, v in extra.items()}
        streak = jnp.where(bad, state.nonfinite_streak + 1, 0)
        metrics = {**metrics, "grad_norm": grad_norm, "nonfinite_streak": streak}
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng, extra=extra,
                              nonfinite_streak=streak, nonfinite_total=state.nonfinite_total + bad)
        return state, metrics

    return step
