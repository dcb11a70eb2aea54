"""SPO in the reference's form: one completion per prompt and one global Beta(alpha, beta) value tracker as baseline.

The tracker is a NamedTuple of 0-d arrays, so it jits, checkpoints with Orbax and replicates across devices like any
other piece of the train state. `spo_paper.py` has the per-prompt form of "Single-stream Policy Optimization"
(Xu & Ding, 2025).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from losses.grpo import rl_metrics
from losses.kl import kl_estimate
from losses.masks import masked_mean, reduce_tokens, whiten, zero_masked
from losses.shapes import Array, ArrayLike, Float, Shaped

REWARD_SCALE = 3.0     # rewards live in about [-3, 3]; the tracker works on (r + 3) / 6 in [0, 1]


class SPOTracker(NamedTuple):
    alpha: jax.Array           # f32 []  Beta pseudo-count of success
    beta: jax.Array            # f32 []  Beta pseudo-count of failure
    old_mean_logp: jax.Array   # f32 []  masked mean log-prob of the previous update's batch
    updates: jax.Array         # int32 [] updates so far (0: no old_mean_logp yet)


def spo_tracker_init(*, rho_min: float | Array = 0.5) -> SPOTracker:
    """alpha = beta = 0.5 * N0 with N0 = 1 / (1 - rho_min), the pseudo-count rho_min's forgetting converges to."""
    n0 = 1.0 / (1.0 - rho_min)
    return SPOTracker(jnp.float32(0.5 * n0), jnp.float32(0.5 * n0), jnp.float32(0.0), jnp.int32(0))


def spo_baseline(state: SPOTracker):
    """b = alpha / (alpha + beta), the Beta mean, in (0, 1)."""
    return state.alpha / (state.alpha + state.beta)


def spo_tracker_update(state: SPOTracker, rewards: Float[ArrayLike, "N"], logps: Float[ArrayLike, "N R"],
                       completion_mask: Shaped[ArrayLike, "N R"], *, d_half: float | Array = 0.06,
                       rho_min: float | Array = 0.5, rho_max: float | Array = 0.96, rho_first: float | Array = 0.9,
                       reward_scale: float = REWARD_SCALE):
    """(state, rho) after one batch, as the reference:

        m = sum(logp * mask) / sum(mask)                    over the whole batch
        rho = rho_first on the first update, else clip(2^(-|m_old - m| / d_half), rho_min, rho_max)
        r_n = mean((r + s) / 2s)                            s = reward_scale
        alpha <- rho * alpha + r_n,   beta <- rho * beta + (1 - r_n)

    The policy's drift since the last update (|m_old - m|) sets how fast old rewards are forgotten. One guard: r_n is
    clipped to [0, 1] (the reference lets a batch mean reward above 3, e.g. format 1.5 + score 3, push beta below
    0 and the baseline outside [0, 1]); for rewards within [-s, s] it changes nothing.
    """
    m = jax.lax.stop_gradient(masked_mean(logps, completion_mask))
    drift_rho = jnp.clip(2.0 ** (-jnp.abs(state.old_mean_logp - m) / d_half), rho_min, rho_max)
    rho = jnp.where(state.updates == 0, jnp.float32(rho_first), drift_rho)
    r_n = jnp.clip(jnp.mean((jnp.asarray(rewards, jnp.float32) + reward_scale) / (2 * reward_scale)), 0.0, 1.0)
    new = SPOTracker(rho * state.alpha + r_n, rho * state.beta + (1.0 - r_n), m.astype(jnp.float32),
                     state.updates + 1)
    return new, rho


def spo_advantages(rewards: Float[ArrayLike, "N"], baseline: Float[ArrayLike, ""], *, reward_scale: float = REWARD_SCALE, clip: float = 5.0,
                   batch_normalize: bool = False):
    """A = clip(r - (2s * b - s), -clip, clip): the reward against the baseline mapped back to the rewards' range.

    The reference does no batch normalisation (the tracker is already a stable baseline); `batch_normalize=True`
    adds the SPO paper's `(A - mean) / (std + 1e-8)` over the batch (std unbiased).
    """
    r = jnp.asarray(rewards, jnp.float32)
    a = jnp.clip(r - (2 * reward_scale * baseline - reward_scale), -clip, clip)
    return whiten(a) if batch_normalize else a


def spo_loss(logps: Float[ArrayLike, "N R"], ref_logps: Float[ArrayLike, "N R"], advantages: Float[ArrayLike, "N"],
             completion_mask: Shaped[ArrayLike, "N R"], beta=0.02, *, kl_estimator: str = "k3",
             loss_norm: str = "sequence", max_tokens: int | None = None, return_metrics: bool = False):
    """Per token `-logp * A + beta * KL`, masked mean per completion, mean over completions (the reference;
    `loss_norm` as grpo_loss). [N, R], [N, R], [N], [N, R] -> scalar (and metrics with `return_metrics`)."""
    m = jnp.asarray(completion_mask, jnp.float32)
    logps = zero_masked(jnp.asarray(logps, jnp.float32), m)                          # [N, R]
    ref_logps = jax.lax.stop_gradient(zero_masked(jnp.asarray(ref_logps, jnp.float32), m))
    A = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]          # [N, 1]
    kl = kl_estimate(logps, ref_logps, kl_estimator)                                  # [N, R]
    loss = reduce_tokens(-logps * A + beta * kl, m, loss_norm, max_tokens)
    if not return_metrics:
        return loss
    return loss, rl_metrics(kl, m, advantages)
