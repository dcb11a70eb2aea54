"""AdamW with the reference's defaults, global-norm clipping, and the reference's two learning-rate schedules."""
import math

import jax.numpy as jnp
import optax


def reference_micro_step(k, accumulation_steps: int):
    """The micro-step index s whose rate the reference uses for optimizer step k (0-based).

    The reference counts micro-steps from 1, sets the rate `get_lr(s)` before each, and steps the optimizer when
    `(s + 1) % A == 0`. At A = 1 that is every micro-step, so update k uses s = k + 1 (the first rate is already
    below lr, the last exactly lr / 10). At A >= 2 the updates fall on s = A - 1, 2A - 1, ...: s = (k + 1) A - 1.
    """
    if accumulation_steps == 1:
        return k + 1
    return (k + 1) * accumulation_steps - 1


def sft_schedule(lr: float, total_micro_steps: int, accumulation_steps: int = 1) -> optax.Schedule:
    """lr(s) = lr * (0.1 + 0.45 * (1 + cos(pi * s / S))): from lr down to lr / 10 over S micro-steps."""
    def schedule(k):
        s = reference_micro_step(k, accumulation_steps)
        return lr * (0.1 + 0.45 * (1.0 + jnp.cos(math.pi * s / total_micro_steps)))
    return schedule


def sft_schedule3(lr: float, micro_per_epoch: int, epochs: int, accumulation_steps: int) -> optax.Schedule:
    """MiniMind-3's indexing of the same cosine: the optimizer steps at micro-steps A, 2A, ... of each epoch (counted
    from 1) and once more after an epoch's last micro-batch when A does not divide the epoch, each update at the rate
    of its micro-step. So update j of an epoch runs at micro-step min((j + 1) A, micro_per_epoch)."""
    A, iters = accumulation_steps, micro_per_epoch
    per_epoch = -(-iters // A)

    def schedule(k):
        epoch, j = jnp.divmod(k, per_epoch)
        s = epoch * iters + jnp.minimum((j + 1) * A, iters)
        return lr * (0.1 + 0.45 * (1.0 + jnp.cos(math.pi * s / (epochs * iters))))
    return schedule


def rl_schedule(lr: float, total_steps: int) -> optax.Schedule:
    """torch CosineAnnealingLR(T_max=total_steps, eta_min=lr/10) over optimizer steps."""
    eta_min = lr / 10
    return lambda k: eta_min + (lr - eta_min) * 0.5 * (1.0 + jnp.cos(math.pi * k / total_steps))


def adamw(schedule: optax.Schedule, grad_clip: float = 1.0, weight_decay: float = 0.01) -> optax.GradientTransformation:
    """torch.optim.AdamW defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01) after global-norm clipping."""
    tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx
