"""AdamW with the reference's defaults, global-norm clipping, and the reference's two learning-rate schedules.

The reference sets the learning rate per micro-batch and steps the optimizer every `accumulation_steps`
micro-batches, so optimizer step k runs with the rate of micro-step `(k + 1) * accumulation_steps - 1`.
"""
import math

import jax.numpy as jnp
import optax


def sft_schedule(lr: float, total_micro_steps: int, accumulation_steps: int = 1) -> optax.Schedule:
    """lr(s) = lr * (0.1 + 0.45 * (1 + cos(pi * s / S))): from lr down to lr / 10 over S micro-steps."""
    def schedule(k):
        s = (k + 1) * accumulation_steps - 1
        return lr * (0.1 + 0.45 * (1.0 + jnp.cos(math.pi * s / total_micro_steps)))
    return schedule


def rl_schedule(lr: float, total_steps: int) -> optax.Schedule:
    """torch CosineAnnealingLR(T_max=total_steps, eta_min=lr/10) over optimizer steps."""
    eta_min = lr / 10
    return lambda k: eta_min + (lr - eta_min) * 0.5 * (1.0 + jnp.cos(math.pi * k / total_steps))


def adamw(schedule: optax.Schedule, grad_clip: float = 1.0, weight_decay: float = 0.01) -> optax.GradientTransformation:
    """torch.optim.AdamW defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01) after global-norm clipping."""
    tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx
