"""Rollouts for the RL stages: sample completions with the jitted generator, then score every completion token
under the policy (and reference, old actor) in one jitted forward over the whole batch.

Sequences are [prompt (left-padded) | completion]; positions are indices in that padded sequence both while
sampling and while scoring, so the log-probs the update recomputes are the sampler's (SPEC.md §7).
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import losses
from minimind_jax.generate import generate


def sample(run, params, prompt_ids, prompt_mask, rng):
    """[N, P] prompts -> (sequences int32 [N, P + R], completion_mask int32 [N, R])."""
    a, tok = run.args, run.tokenizer
    if a.rollout_dtype == "bfloat16":
        params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    out = generate(run.model, params, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask), rng=rng,
                   max_new_tokens=a.max_gen_len, temperature=a.rollout_temperature, top_k=a.rollout_top_k,
                   top_p=a.rollout_top_p, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    return out.sequences, out.completion_mask


@partial(jax.jit, static_argnames=("model",))
def completion_logps(model, params, sequences, attention_mask, completion_mask):
    """Log-prob of each completion token, [N, R]; the logits at position t predict token t + 1."""
    R = completion_mask.shape[1]
    logits = model.apply({"params": params}, sequences[:, :-1], attention_mask=attention_mask[:, :-1]).logits
    return losses.token_logprobs(logits[:, -R:], sequences[:, -R:])     # [N, R]


def attention_mask(prompt_mask, completion_mask):
    """Keys a completion token may attend to: the real prompt tokens and the completion up to its eos."""
    return jnp.concatenate([jnp.asarray(prompt_mask), jnp.asarray(completion_mask)], axis=1)


def decode(tokenizer, sequences, completion_mask, prompt_len: int) -> list[str]:
    """Completion texts up to (not including) the first eos."""
    ids, mask = np.asarray(sequences)[:, prompt_len:], np.asarray(completion_mask)
    return [tokenizer.decode([t for t, m in zip(row, keep) if m and t != tokenizer.eos_id])
            for row, keep in zip(ids, mask)]


def policy_logps(model, params, batch, rng):
    """In the loss: the policy's completion log-probs [N, R] (differentiable) and its MoE aux loss."""
    seq, amask, cmask = batch["sequences"], batch["attention_mask"], batch["completion_mask"]
    R = cmask.shape[1]
    out = model.apply({"params": params}, seq[:, :-1], attention_mask=amask[:, :-1], train=True,
                      rngs={"dropout": rng})
    return losses.token_logprobs(out.logits[:, -R:], seq[:, -R:]), out.aux_loss
