"""What the RL stages share: a batch of prompts becomes a batch of scored rollouts, ready for the jitted update.

prompts [A, B, P] -> G completions each -> rewards (host: they read strings) -> log-probs of the reference and of
the sampling policy -> every array reshaped to [A, B * G, ...] (micro-batch axis first, like every engine batch).
"""
import time

import jax
import numpy as np

from train import rollout
from train.rewards import score


def rollout_batch(run, sample_params, frozen, arrays, host, step, *, num_generations=1, old_params=None):
    """(device batch, host info) for one optimizer step. The sampling key depends only on (seed, step)."""
    a = run.args
    A, B, P = arrays["prompt_ids"].shape
    G = num_generations
    prompt_ids = np.repeat(arrays["prompt_ids"].reshape(A * B, P), G, axis=0)        # [N, P], N = A*B*G
    prompt_mask = np.repeat(arrays["prompt_mask"].reshape(A * B, P), G, axis=0)
    rng = jax.random.fold_in(jax.random.PRNGKey(a.seed + 1), step)

    t0 = time.perf_counter()
    sequences, completion_mask = rollout.sample(run, sample_params, prompt_ids, prompt_mask, rng)
    amask = rollout.attention_mask(prompt_mask, completion_mask)
    jax.block_until_ready(sequences)
    t1 = time.perf_counter()
    responses = rollout.decode(run.tokenizer, sequences, completion_mask, P)
    repeat = lambda xs: [x for x in xs for _ in range(G)]
    rewards, components = score(run, repeat(host["prompts"]), responses, repeat(host["answers"]))
    t2 = time.perf_counter()
    batch = {"sequences": sequences, "attention_mask": amask, "completion_mask": completion_mask,
             "rewards": rewards, "index": np.repeat(arrays["index"].reshape(-1), G),
             "ref_logps": rollout.completion_logps(run.model, frozen["ref"], sequences, amask, completion_mask)}
    if old_params is not None:
        batch["old_logps"] = rollout.completion_logps(run.model, old_params, sequences, amask, completion_mask)
    batch = jax.tree.map(lambda x: np.asarray(x).reshape(A, B * G, *np.shape(x)[1:]), batch)
    t3 = time.perf_counter()
    lengths = np.asarray(completion_mask).sum(-1)
    info = {"reward": float(np.mean(rewards)), **{f"reward_{k}": float(np.mean(v)) for k, v in components.items()},
            "response_len": float(lengths.mean()), "rollout_s": t1 - t0, "reward_s": t2 - t1, "logps_s": t3 - t2}
    return batch, info
