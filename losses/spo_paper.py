"""SPO as its paper defines it: "Single-stream Policy Optimization" (Xu & Ding, 2025, arXiv 2509.13232).

One Beta(alpha, beta) tracker per prompt of the data set; its mean p_hat = alpha / (alpha + beta) is the baseline of
a reward in [0, 1] (binary for verifiable prompts); advantages r - p_hat are normalised over the whole batch; the
policy update is PPO-clip; each tracker forgets at a rate set by how far the policy drifted since that prompt's last
visit; prompts are resampled by how uncertain their p_hat is (an adaptive curriculum).

The state is `SPOTable`, arrays whose leading axis is the prompt's index in the data set: part of the train state
and of the Orbax checkpoint, sharded along that axis like the data, read by gather and written by jitted scatter.
One step, for a loaded batch of prompt indices `loaded` [B]:

    pick = spo_resample(key, spo_sampling_weights(spo_table_baseline(table, loaded)))    # positions in the batch
    index = loaded[pick]                                                                # repeats are possible
    p_hat = spo_table_baseline(table, index)                 # read before the update
    ... one completion per row under the sampling policy: tokens, old_logps, completion_mask, rewards r ...
    advantages = spo_paper_advantages(r, p_hat)
    loss = spo_paper_loss(logps, old_logps, advantages, completion_mask)
    stored, stored_mask, _ = spo_table_stored(table, index)  # each prompt's last-visit completion: rescore it
    rho, D = spo_table_rho(table, index, logps_now_of(stored))
    table = spo_table_update(table, index, r, rho, tokens, old_logps, completion_mask)

The reference's simplification (one global tracker, rewards in [-3, 3]) is `spo.py`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from losses.masks import masked_mean, reduce_tokens, whiten, zero_masked
from losses.shapes import Array, ArrayLike, Float, Shaped

RHO_MIN = 0.875        # the paper's runs: N0 = 1 / (1 - rho_min) = 8 pseudo-samples of memory at most drift
RHO_MAX = 0.96         # at no drift, still forget: a window of ~25 visits
D_HALF = 0.06          # nats of mean |log-prob change| after which old evidence counts half
EXPLORATION = 0.05     # sampling weight floor, so settled prompts still come back


class SPOTable(NamedTuple):
    alpha: jax.Array            # f32 [N]     Beta pseudo-count of success, per prompt
    beta: jax.Array             # f32 [N]     Beta pseudo-count of failure
    visits: jax.Array           # int32 [N]   updates of each prompt so far
    response: jax.Array         # int32 [N, R] the completion of its last visit
    response_len: jax.Array     # int32 [N]   its length (a completion mask is a prefix)
    response_logps: jax.Array   # f32 [N, R]  its log-probs under the policy that sampled it


def spo_table_init(num_prompts: int, max_len: int, successes=None, num_samples=0, *,
                   rho_min: float | Array = RHO_MIN) -> SPOTable:
    """Priors from `num_samples` = n offline samples per prompt of which `successes` = s [N] succeeded:

        alpha = N0 (s + 0.5) / (n + 1),   beta = N0 (n - s + 0.5) / (n + 1),   N0 = 1 / (1 - rho_min)

    the smoothed success rate worth N0 pseudo-samples (what forgetting at rho_min settles to); alpha = beta = 0.5
    (Jeffreys) with no samples. `num_samples` may be a scalar or [N]; R = max_len is the completion width stored.
    """
    N, R = num_prompts, max_len
    half = jnp.full((N,), 0.5, jnp.float32)
    if successes is None:
        alpha, beta = half, jnp.copy(half)          # distinct buffers: the train state is donated to the step
    else:
        s = jnp.broadcast_to(jnp.asarray(successes, jnp.float32), (N,))
        n = jnp.broadcast_to(jnp.asarray(num_samples, jnp.float32), (N,))
        n0 = 1.0 / (1.0 - rho_min)
        alpha = jnp.where(n == 0, half, n0 * (s + 0.5) / (n + 1))
        beta = jnp.where(n == 0, half, n0 * (n - s + 0.5) / (n + 1))
    return SPOTable(alpha, beta, jnp.zeros((N,), jnp.int32), jnp.zeros((N, R), jnp.int32),
                    jnp.zeros((N,), jnp.int32), jnp.zeros((N, R), jnp.float32))


def spo_table_baseline(table: SPOTable, index):
    """p_hat = alpha / (alpha + beta) of each row's prompt, [B] int -> f32 [B] in (0, 1)."""
    alpha, beta = table.alpha[index], table.beta[index]
    return alpha / (alpha + beta)


def spo_table_stored(table: SPOTable, index):
    """(tokens int32 [B, R], completion_mask int32 [B, R], logps f32 [B, R]) of each prompt's last-visit completion,
    for the trainer to rescore under the current policy. A never-visited prompt has an empty mask."""
    R = table.response.shape[1]
    mask = (jnp.arange(R)[None, :] < table.response_len[index][:, None]).astype(jnp.int32)
    return table.response[index], mask, table.response_logps[index]


def spo_table_rho(table: SPOTable, index, new_logps, *, d_half: float | Array = D_HALF, rho_min: float | Array = RHO_MIN,
                  rho_max: float | Array = RHO_MAX):
    """(rho f32 [B], D f32 [B]) from `new_logps` [B, R], the current policy's log-probs of `spo_table_stored`'s tokens:

        D = masked mean_t |logp_then - logp_now|,   rho = clip(2^(-D / d_half), rho_min, rho_max)

    and rho_max on a first visit (nothing stored; D = 0). Measured on the same tokens, D is the policy's drift since
    that visit, not the noise of comparing two different samples.
    """
    _, mask, old = spo_table_stored(table, index)
    D = masked_mean(jnp.abs(old - jnp.asarray(new_logps, jnp.float32)), mask, axis=-1)          # [B]
    D = jnp.where(table.visits[index] == 0, 0.0, jax.lax.stop_gradient(D))
    return jnp.clip(2.0 ** (-D / d_half), rho_min, rho_max), D


def spo_table_update(table: SPOTable, index, rewards, rho, response, response_logps, completion_mask, *,
                     rho_max: float | Array = RHO_MAX) -> SPOTable:
    """The table after one batch. Row i (prompt index[i], reward r_i clipped to [0, 1] as a Beta update needs):

        alpha <- rho_i alpha + r_i,   beta <- rho_i beta + (1 - r_i)

    and its completion, log-probs and length are stored for the next visit's drift. Rows apply in batch order. A
    prompt repeated in the batch (resampling is with replacement) decays by rho_max between its repeats (same
    policy, D = 0), which one scatter-multiply and one scatter-add do in closed form,

        alpha <- (prod_i rho_i) alpha + sum_i rho_max^(repeats after i) r_i,

    and its last repeat is the completion stored. Prompts not in the batch keep everything.
    """
    table, index = SPOTable(*map(jnp.asarray, table)), jnp.asarray(index)
    N, R = table.response.shape
    if jnp.shape(response)[-1] != R:
        raise ValueError(f"losses/spo_paper.py: completions are {jnp.shape(response)[-1]} wide, the table stores {R}")
    r = jnp.clip(jnp.asarray(rewards, jnp.float32), 0.0, 1.0)                       # [B]
    same = index[:, None] == index[None, :]                                          # [B, B]
    repeat = jnp.any(jnp.tril(same, -1), axis=1)                                     # an earlier row has this prompt
    after = jnp.sum(jnp.triu(same, 1), axis=1).astype(jnp.float32)                   # rows after with this prompt
    rho = jnp.where(repeat, rho_max, jnp.asarray(rho, jnp.float32))                 # [B]
    carry = jnp.float32(rho_max) ** after                                            # decay still to come, [B]
    alpha = table.alpha.at[index].multiply(rho).at[index].add(carry * r)
    beta = table.beta.at[index].multiply(rho).at[index].add(carry * (1.0 - r))
    last = jnp.where(after == 0, index, N)                                           # only the last repeat writes
    mask = jnp.asarray(completion_mask, jnp.int32)
    return SPOTable(
        alpha, beta, table.visits.at[index].add(1),
        table.response.at[last].set(jnp.asarray(response, jnp.int32), mode="drop"),
        table.response_len.at[last].set(jnp.sum(mask, axis=-1), mode="drop"),
        table.response_logps.at[last].set(zero_masked(jnp.asarray(response_logps, jnp.float32), mask), mode="drop"))


def spo_paper_advantages(rewards: Float[ArrayLike, "N"], baselines: Float[ArrayLike, "N"], *,
                         batch_normalize: bool = True) -> Float[Array, "N"]:
    """A = r - p_hat, then (A - mean) / (std + 1e-8) over the whole batch (std unbiased): [B], [B] -> [B]."""
    a = jnp.asarray(rewards, jnp.float32) - jnp.asarray(baselines, jnp.float32)
    return whiten(a) if batch_normalize else a


def spo_paper_loss(logps: Float[ArrayLike, "N R"], old_logps: Float[ArrayLike, "N R"], advantages: Float[ArrayLike, "N"],
                   completion_mask: Shaped[ArrayLike, "N R"], *, clip_eps: float = 0.2,
                   clip_eps_high: float | None = None, loss_norm: str = "token", max_tokens: int | None = None,
                   return_metrics: bool = False):
    """PPO-clip per token (the paper's policy update), reduced by `loss_norm`:

        ratio = exp(logp - old_logp),   l = -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A)

    'token' (every token of the batch weighs the same, the default of the paper's verl code), 'sequence' (the
    reference's) or 'constant'; `clip_eps_high` (default eps) is DAPO's asymmetric upper clip. [B, R] log-probs of
    the policy and of the sampling policy (constant), [B] advantages, [B, R] mask -> scalar. Metrics: clip_frac
    (fraction of tokens whose gradient the clip removed), approx_kl (token mean of (logp - old)^2 / 2), ratio_mean.
    """
    m = jnp.asarray(completion_mask, jnp.float32)
    logps = zero_masked(jnp.asarray(logps, jnp.float32), m)                          # [B, R]
    old = jax.lax.stop_gradient(zero_masked(jnp.asarray(old_logps, jnp.float32), m))
    A = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]          # [B, 1]
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = jnp.exp(logps - old)                                                      # [B, R]
    unclipped, clipped = ratio * A, jnp.clip(ratio, 1 - clip_eps, 1 + high) * A
    loss = reduce_tokens(-jnp.minimum(unclipped, clipped), m, loss_norm, max_tokens)
    if not return_metrics:
        return loss
    return loss, {"clip_frac": masked_mean((clipped < unclipped).astype(jnp.float32), m),
                  "approx_kl": masked_mean(0.5 * jnp.square(logps - old), m), "ratio_mean": masked_mean(ratio, m),
                  "advantage_mean": jnp.mean(A), "advantage_std": jnp.std(A)}


def spo_sampling_weights(baselines, *, epsilon: float = EXPLORATION):
    """w = sqrt(p_hat (1 - p_hat)) + epsilon > 0: the reward's Bernoulli std, largest for prompts the policy solves
    half the time (the most learning signal); epsilon keeps solved and hopeless prompts reachable."""
    p = jnp.clip(jnp.asarray(baselines, jnp.float32), 0.0, 1.0)
    return jnp.sqrt(p * (1.0 - p)) + epsilon


def spo_resample(key, weights, num_samples: int | None = None):
    """int32 [num_samples or B]: positions in the loaded batch drawn with replacement with probability w / sum(w).
    A pure function of the key, so a resumed run draws the same batches."""
    B = weights.shape[0]
    p = jnp.asarray(weights, jnp.float32) / jnp.sum(weights)
    return jax.random.choice(key, B, (num_samples or B,), replace=True, p=p).astype(jnp.int32)
