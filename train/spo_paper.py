"""`--stage spo --spo_mode paper`: SPO as its paper defines it (arXiv 2509.13232), the trainer's side (issue 6).

The math is in losses/spo_paper.py; this module moves arrays between it, the sampler and the jitted step. The
state is one Beta tracker per prompt of the data set, `extra['table']` (an `SPOTable` keyed by the row index), so it
is donated to the step, checkpointed by Orbax and restored exactly like the params. One optimizer step:

    loaded rows [A, B] --resample by sqrt(p(1-p)) + 0.05, key (seed, step)--> rows [A, B], repeats possible
    p_hat = alpha / (alpha + beta) of each row's prompt, read before the update
    one completion per row, reward r clipped to [0, 1] (binary with --reasoning 0 --answer_reward 1)
    rescore each prompt's stored last-visit completion under the current policy: D, rho (its drift since then)
    A = whiten(r - p_hat) over the whole batch; loss = PPO-clip per token (no KL term: the paper's update)
    in the jitted step: alpha <- rho alpha + r, beta <- rho beta + (1 - r), the completion stored (jitted scatter)

The reference's SPO (one global tracker) stays the default, `--spo_mode minimind` (train/stages/spo.py).
"""
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import losses
from losses.spo_paper import RHO_MAX
from minimind_jax.data import SAMPLE_DIR, RLAIFDataset
from train import rollout
from train.rewards import score
from train.rl import rollout_batch
from train.rollout import completion_logps, policy_logps

RESAMPLE, INIT = 1, 2     # RNG streams of this module, folded into the seed (the sampler's own is seed + 1)
INIT_ROWS = 64            # completions sampled together by the offline init: one compiled shape, a bounded KV cache


def _key(seed: int, stream: int, i: int) -> jax.Array:
    """A key that depends only on (seed, stream, i): a resumed run draws what an unbroken one drew."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), i)


def dataset(run) -> RLAIFDataset:
    """The prompts the engine trains on (the table's rows are their indices), opened once per run from the token
    cache. The engine opens the same file; it could hand it over in run.cache['dataset'] and save the second open."""
    if "dataset" not in run.cache:
        a = run.args
        path = Path(a.data_path) if a.data_path else SAMPLE_DIR / "rlaif.jsonl"
        run.cache["dataset"] = RLAIFDataset(path, run.tokenizer, a.max_seq_len, skip_bad_lines=a.skip_bad_lines,
                                            cache_dir=a.cache_dir)
    return run.cache["dataset"]


# ---- the table's initial state ------------------------------------------------------------------------------------

def offline_successes(run, params, ds, n: int) -> tuple[np.ndarray, int]:
    """(s f32 [N], tokens generated): summed [0, 1] rewards of n completions per prompt by the starting policy.

    Cost: N * n completions of at most --max_gen_len new tokens, INIT_ROWS at a time through the jitted sampler (one
    shape, so one compile). The tiny model on 2 CPU cores samples ~4,350 prompts x 4 completions x 16 new tokens in
    about a minute; for the 26M model budget N * n * max_gen_len decoded tokens at the sampler's rate (bench.rl).
    """
    a, N = run.args, len(ds)
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
        sequences, completion_mask = rollout.sample(run, params, ids, mask, _key(a.seed, INIT, k))
        responses = rollout.decode(run.tokenizer, sequences, completion_mask, ids.shape[1])
        repeat = lambda xs: [x for x in xs for _ in range(n)]
        rewards, _ = score(run, repeat(b["prompts"]), responses, repeat(b["answers"]))
        successes[rows[:kept]] = np.clip(rewards, 0.0, 1.0).reshape(per_call, n).sum(axis=1)[:kept]
        tokens += int(np.asarray(completion_mask)[:kept * n].sum())
    return successes, tokens


def _resuming(run) -> bool:
    """A checkpoint will replace the table, so the offline samples would be thrown away."""
    ckpt = run.run_dir / "checkpoints"
    return bool(run.args.from_resume) and ckpt.is_dir() and any(ckpt.iterdir())


def init_extra(run, params, frozen) -> dict:
    """{'table': SPOTable} over every prompt of the data set: Jeffreys priors, or priors from --spo_init_samples."""
    a, ds = run.args, dataset(run)
    N, n = len(ds), a.spo_init_samples
    if n <= 0 or _resuming(run):
        return {"table": losses.spo_table_init(N, a.max_gen_len, rho_min=a.spo_rho_min)}
    t0 = time.perf_counter()
    successes, tokens = offline_successes(run, params, ds, n)
    run.cache["spo_init_tokens"] = tokens
    if jax.process_index() == 0:
        print(f"spo init: {n} samples x {N} prompts, {tokens:,} tokens in {time.perf_counter() - t0:.0f} s; "
              f"mean success rate {successes.mean() / n:.3f}")
    return {"table": losses.spo_table_init(N, a.max_gen_len, successes, n, rho_min=a.spo_rho_min)}


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
    attention = rollout.attention_mask(prompt_mask, stored_mask)
    new_logps = completion_logps(model, params, sequences, attention, stored_mask)    # [n, R]
    return losses.spo_table_rho(table, index, new_logps, rho_min=rho_min)


def _take(arrays: dict, host: dict, pick: np.ndarray) -> tuple[dict, dict]:
    """The loaded batch's rows at `pick` (positions in the flattened [A * B]), shapes kept."""
    take = lambda v: v.reshape(-1, *v.shape[2:])[pick].reshape(v.shape)
    return {k: take(v) for k, v in arrays.items()}, {k: [v[i] for i in pick] for k, v in host.items()}


def _check_rewards(run, rewards: np.ndarray) -> None:
    if (rewards.min() < 0 or rewards.max() > 1) and not run.cache.get("spo_reward_warned"):
        run.cache["spo_reward_warned"] = True
        print(f"--spo_mode paper: rewards in [{rewards.min():.3g}, {rewards.max():.3g}] are clipped to [0, 1] for the "
              f"Beta trackers; the paper's reward is binary (e.g. --reasoning 0 --answer_reward 1)")


def prepare(run, state, frozen, arrays, host, step):
    """(device batch, host info) of one step; the batch carries what the jitted table update needs (rho)."""
    a, table = run.args, state.extra["table"]
    A, B = arrays["index"].shape
    pick, weights = _prioritised(table, arrays["index"].reshape(-1), _key(a.seed, RESAMPLE, step))
    arrays, host = _take(arrays, host, np.asarray(pick))
    index = arrays["index"].reshape(-1)                                               # [A*B] data-set rows

    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, old_params=state.params)
    rewards = np.asarray(batch["rewards"]).reshape(-1)
    _check_rewards(run, rewards)
    p_hat = losses.spo_table_baseline(table, index)                                   # [A*B], before the update
    revisit = np.asarray(table.visits)[index] > 0
    if revisit.any():
        P = arrays["prompt_ids"].shape[-1]
        rho, D = _drift(run.model, state.params, table, index, arrays["prompt_ids"].reshape(A * B, P),
                        arrays["prompt_mask"].reshape(A * B, P), rho_min=a.spo_rho_min)
    else:                                                                             # nothing stored to rescore
        rho, D = np.full(A * B, RHO_MAX, np.float32), np.zeros(A * B, np.float32)
    advantages = losses.spo_paper_advantages(np.clip(rewards, 0.0, 1.0), p_hat)      # whole batch
    batch["advantages"] = np.asarray(advantages).reshape(A, B)
    batch["rho"] = np.asarray(rho, np.float32).reshape(A, B)
    weights, D = np.asarray(weights), np.asarray(D)
    info.update(baseline=float(np.mean(p_hat)), rho=float(np.mean(rho)),
                drift=float(D[revisit].mean()) if revisit.any() else 0.0, revisit_frac=float(revisit.mean()),
                sample_unique=len(np.unique(index)) / len(index),
                sample_weight_ratio=float(weights.max() / weights.min()))
    return batch, info


# ---- the loss and the table update, inside the jitted step --------------------------------------------------------

def make_loss(run):
    model, a = run.model, run.args

    def loss_fn(params, batch, rng, frozen, extra):
        logps, aux = policy_logps(model, params, batch, rng)                             # [N, R]
        mask = batch["completion_mask"]
        pg, metrics = losses.spo_paper_loss(logps, batch["old_logps"], batch["advantages"], mask,
                                            clip_eps=a.clip_epsilon, return_metrics=True)
        kl = losses.masked_mean(losses.kl_estimate(jax.lax.stop_gradient(logps), batch["ref_logps"],
                                                   a.kl_estimator), mask)              # logged, not optimised
        loss = pg + aux
        return loss, {"loss": loss, "policy_loss": pg, "aux_loss": aux, "kl": kl, **metrics}

    return loss_fn


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
