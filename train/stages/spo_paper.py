"""`--stage spo --spo_mode paper` (or `--stage spo_paper`): SPO as its paper defines it ("Single-stream Policy
Optimization", arXiv 2509.13232), the trainer's side.

The math is in losses/spo_paper.py; this module moves arrays between it, the sampler and the jitted step. The
state is one Beta tracker per prompt of the data set, `extra['table']` (an `SPOTable` keyed by the row index), so it
is donated to the step, checkpointed by Orbax and restored exactly like the params. One optimizer step:

    loaded rows [A, B] --resample by sqrt(p(1-p)) + 0.05, key (seed, step)--> rows [A, B], repeats possible
    p_hat = alpha / (alpha + beta) of each row's prompt, read before the update
    one completion per row, reward r clipped to [0, 1] (binary with --reasoning 0 --answer_reward 1)
    rescore each prompt's stored last-visit completion under the current policy: D, rho (its drift since then)
    A = whiten(r - p_hat) over the whole batch; loss = PPO-clip per token (no KL term: the paper's update)
    in the jitted step: alpha <- rho alpha + r, beta <- rho beta + (1 - r), the completion stored (jitted scatter)

The reference's SPO (one global tracker) stays `--stage spo` (train/stages/spo.py).
"""
import sys
import time
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import losses
from losses.spo_paper import RHO_MAX
from train import rng
from train.distributed import host_copy
from train.rollout import attention_mask, completion_logps, decode, rollout_batch, sample
from train.stage import Stage, rl_schedule
from train.stages.common import init_with_reference, policy_gradient_loss
from train.stages.spo import STAGE as SPO

INIT_ROWS = 64            # completions sampled together by the offline init: one compiled shape, a bounded KV cache


# ---- the table's initial state ------------------------------------------------------------------------------------

def offline_successes(run, params, ds, n: int) -> tuple[np.ndarray, int]:
    """(s f32 [N], tokens generated): summed [0, 1] rewards of n completions per prompt by the starting policy.

    Cost: N * n completions of at most --max_gen_len new tokens, INIT_ROWS at a time through the jitted sampler (one
    shape, so one compile). The tiny model on 2 CPU cores samples ~4,350 prompts x 4 completions x 16 new tokens in
    about a minute; for the 26M model budget N * n * max_gen_len decoded tokens at the sampler's rate (bench.rl).
    On several processes every process samples and scores every prompt (the same keys, so the same priors
    everywhere): done once, before the first step.
    """
    seed, N = run.config.seed, len(ds)
    per_call = max(1, INIT_ROWS // n)                                     # prompts per sampler call
    successes, tokens = np.zeros(N, np.float32), 0
    starts = range(0, N, per_call)
    bar = tqdm(starts, desc=f"spo init ({n} samples per prompt)", unit="batch", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not sys.stderr.isatty())
    for k, start in enumerate(bar):
        rows = np.arange(start, start + per_call) % N                     # the last call wraps: one shape throughout
        kept = min(per_call, N - start)
        b = ds.batch(rows)
        ids, mask = np.repeat(b["prompt_ids"], n, axis=0), np.repeat(b["prompt_mask"], n, axis=0)   # [per_call*n, P]
        sequences, completion_mask = sample(run, params, ids, mask, rng.draw(seed, "spo_init", k))
        responses = decode(run.tokenizer, sequences, completion_mask, ids.shape[1])
        repeat = lambda xs: [x for x in xs for _ in range(n)]
        rewards, _ = run.score(repeat(b["prompts"]), responses, repeat(b["answers"]))
        successes[rows[:kept]] = np.clip(rewards, 0.0, 1.0).reshape(per_call, n).sum(axis=1)[:kept]
        tokens += int(np.asarray(completion_mask)[:kept * n].sum())
    return successes, tokens


def _resuming(run) -> bool:
    """A checkpoint will replace the table, so the offline samples would be thrown away."""
    ckpt = run.run_dir / "checkpoints"
    return run.config.checkpoint.from_resume and ckpt.is_dir() and any(ckpt.iterdir())


def init_extra(run, params, frozen, ds) -> dict:
    """{'table': SPOTable} over every prompt of the data set `ds` (the one the engine trains on): Jeffreys priors, or
    priors from --spo_init_samples; `init_tokens`, what those offline samples generated (0 for Jeffreys priors)."""
    sp, R = run.config.spo_paper, run.config.rollout.max_gen_len
    N, n = len(ds), sp.init_samples
    if n <= 0 or _resuming(run):
        return {"table": losses.spo_table_init(N, R, rho_min=sp.rho_min), "init_tokens": np.int32(0)}
    t0 = time.perf_counter()
    successes, tokens = offline_successes(run, params, ds, n)
    if jax.process_index() == 0:
        print(f"spo init: {n} samples x {N} prompts, {tokens:,} tokens in {time.perf_counter() - t0:.0f} s; "
              f"mean success rate {successes.mean() / n:.3f}")
    return {"table": losses.spo_table_init(N, R, successes, n, rho_min=sp.rho_min), "init_tokens": np.int32(tokens)}


# ---- before the step: resample, roll out, rescore, advantages -----------------------------------------------------

@jax.jit
def _prioritised(table, loaded, key):
    """(positions int32 [n], weights f32 [n]): the loaded rows drawn with replacement by sqrt(p(1-p)) + eps."""
    weights = losses.spo_sampling_weights(losses.spo_table_baseline(table, loaded))
    return losses.spo_resample(key, weights), weights


@partial(jax.jit, static_argnames=("model", "rho_min"))
def _drift(model, params, table, index, prompt_ids, prompt_mask, *, rho_min):
    """(rho f32 [n], D f32 [n]): each prompt's stored completion, behind the same left-padded prompt as when it was
    sampled, scored by the current policy and compared with the log-probs stored then."""
    stored, stored_mask, _ = losses.spo_table_stored(table, index)                   # [n, R]
    sequences = jnp.concatenate([prompt_ids, stored], axis=1)                         # [n, P + R]
    attention = attention_mask(prompt_mask, stored_mask)
    new_logps = completion_logps(model, params, sequences, attention, stored_mask)    # [n, R]
    return losses.spo_table_rho(table, index, new_logps, rho_min=rho_min)


def _check_rewards(rewards: np.ndarray) -> None:
    """Warn (once: the warnings module's default) that rewards outside [0, 1] are clipped for the trackers."""
    if rewards.min() < 0 or rewards.max() > 1:
        warnings.warn(f"--spo_mode paper: rewards in [{rewards.min():.3g}, {rewards.max():.3g}] are clipped to "
                      f"[0, 1] for the Beta trackers; the paper's reward is binary (e.g. --reasoning 0 "
                      f"--answer_reward 1)", stacklevel=2)


def resample(run, state, rows: np.ndarray, step: int) -> np.ndarray:
    """The rows [A, B] the step trains on: drawn from the whole step's loaded rows, before they are split between
    processes (the table and the key are the same everywhere, so every process draws alike)."""
    pick, _ = _prioritised(state.extra["table"], rows.reshape(-1), rng.draw(run.config.seed, "spo_resample", step))
    return rows.reshape(-1)[host_copy(pick)].reshape(rows.shape)


def prepare(run, state, frozen, arrays, host, step):
    """(device batch, host info) of one step; the batch carries what the jitted table update needs (rho)."""
    table, P = state.extra["table"], arrays["prompt_ids"].shape[-1]
    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, old_params=state.params)
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    A, B = batch["rewards"].shape                                                     # the whole step's rows
    index = host_copy(batch["index"]).reshape(-1)                                     # [A*B] data-set rows
    rewards = host_copy(batch["rewards"]).reshape(-1)
    _check_rewards(rewards)
    p_hat = losses.spo_table_baseline(table, index)                                   # [A*B], before the update
    revisit = host_copy(table.visits[index]) > 0
    if revisit.any():
        prompt_ids, prompt_mask = batch["sequences"][..., :P], batch["attention_mask"][..., :P]
        rho, D = _drift(run.model, state.params, table, flat(batch["index"]), flat(prompt_ids), flat(prompt_mask),
                        rho_min=run.config.spo_paper.rho_min)
    else:                                                                             # nothing stored to rescore
        rho, D = np.full(A * B, RHO_MAX, np.float32), np.zeros(A * B, np.float32)
    advantages = losses.spo_paper_advantages(np.clip(rewards, 0.0, 1.0), p_hat)      # whole batch
    batch["advantages"] = jnp.reshape(advantages, (A, B))
    batch["rho"] = jnp.reshape(jnp.asarray(rho, jnp.float32), (A, B))
    weights, rho, D = (host_copy(x) for x in (losses.spo_sampling_weights(p_hat), rho, D))
    info.update(baseline=float(np.mean(host_copy(p_hat))), rho=float(np.mean(rho)),
                drift=float(D[revisit].mean()) if revisit.any() else 0.0, revisit_frac=float(revisit.mean()),
                sample_unique=len(np.unique(index)) / len(index),
                sample_weight_ratio=float(weights.max() / weights.min()))
    return batch, info, None


# ---- the loss and the table update, inside the jitted step --------------------------------------------------------

def make_loss(run):
    o = run.config.objective

    def objective(logps, batch):
        mask = batch["completion_mask"]
        pg, metrics = losses.spo_paper_loss(logps, batch["old_logps"], batch["advantages"], mask,
                                            clip_eps=o.clip_epsilon, return_metrics=True)
        kl = losses.masked_mean(losses.kl_estimate(jax.lax.stop_gradient(logps), batch["ref_logps"],
                                                   o.kl_estimator), mask)              # logged, not optimised
        return pg, {"kl": kl, **metrics}
    return policy_gradient_loss(run, objective)


def update_extra(run):
    def update(extra, params, batch, step):
        """The per-prompt trackers after this step's rows (all micro-batches, in order): one jitted scatter."""
        flat = lambda x: x.reshape(-1, *x.shape[2:])                                    # [A, B, ...] -> [A*B, ...]
        R = batch["completion_mask"].shape[-1]
        table = losses.spo_table_update(extra["table"], flat(batch["index"]), flat(batch["rewards"]),
                                        flat(batch["rho"]), flat(batch["sequences"])[:, -R:],
                                        flat(batch["old_logps"]), flat(batch["completion_mask"]))
        return {**extra, "table": table}
    return update


STAGE = Stage(
    name="spo_paper",
    generations=(2,),
    defaults=SPO.defaults,
    data_file=SPO.data_file,
    dataset="rlaif",
    make_loss=make_loss,
    init=init_with_reference,
    init_extra=init_extra,
    schedule=rl_schedule,
    resample=resample,
    prepare=prepare,
    update_extra=update_extra,
)
